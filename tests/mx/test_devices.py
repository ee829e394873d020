"""Which devices a worker drives (gluon_elastic.devices), on every backend, without GPUs.

MXNet builds ``mx.gpu(i)`` context objects on any machine; the visible GPU count is given to the
rule (or MXNet's count is replaced), so the GPU layout of an 8-GPU host is checked here.
"""
import mxnet as mx
import pytest

from gluon_elastic import recipe
from gluon_elastic.devices import choose_contexts, device_ids, split_and_load, split_sizes


def test_local_rank_r_with_n_devices_drives_gpus_r_times_n_onwards():
    assert device_ids(0, 1) == [0]
    assert device_ids(1, 4) == [4, 5, 6, 7]
    assert choose_contexts(1, 4, "auto", num_gpus=8) == [mx.gpu(4), mx.gpu(5), mx.gpu(6),
                                                          mx.gpu(7)]
    assert choose_contexts(7, 1, "gpu", num_gpus=8) == [mx.gpu(7)]


def test_too_few_gpus_or_none_is_refused_with_the_layout_in_the_message():
    with pytest.raises(ValueError) as info:
        choose_contexts(2, 4, "auto", num_gpus=8)
    assert str(info.value).startswith(
        "local rank 2 with 4 GPU(s) per process needs gpu(8),gpu(9),gpu(10),gpu(11), but this "
        "host shows 8 GPU(s): start at most 2 process(es) per host")
    with pytest.raises(ValueError, match="--device gpu: no GPU is visible"):
        choose_contexts(0, 1, "gpu", num_gpus=0)
    with pytest.raises(ValueError, match="positive integer"):
        device_ids(0, 0)


def test_cpu_gives_n_distinct_contexts_whatever_the_local_rank():
    assert choose_contexts(3, 2, "cpu", num_gpus=8) == [mx.cpu(0), mx.cpu(1)]
    assert choose_contexts(3, 3, "auto", num_gpus=0) == [mx.cpu(0), mx.cpu(1), mx.cpu(2)]


def test_kvstore_and_horovod_workers_take_the_gpus_of_their_local_rank(monkeypatch):
    """recipe.choose_contexts reads the backend's local rank: the launcher's variable for a
    KVStore worker, ``hvd.local_rank()`` for a Horovod worker (stand-ins: no group starts)."""
    from gluon_elastic.backends.horovod import HorovodBackend
    from gluon_elastic.backends.kvstore import KVStoreBackend

    monkeypatch.setattr(mx.context, "num_gpus", lambda: 8)
    monkeypatch.setenv("GLUON_ELASTIC_LOCAL_RANK", "1")
    kvstore_worker = KVStoreBackend.__new__(KVStoreBackend)
    assert recipe.choose_contexts(kvstore_worker, "auto", 4) == [mx.gpu(i) for i in range(4, 8)]

    class LocalRankThree:
        @staticmethod
        def local_rank():
            return 3

    horovod_worker = HorovodBackend.__new__(HorovodBackend)
    horovod_worker._hvd = LocalRankThree()   # pylint: disable=protected-access
    horovod_worker._joined = True            # pylint: disable=protected-access
    assert recipe.choose_contexts(horovod_worker, "gpu", 2) == [mx.gpu(6), mx.gpu(7)]
    # --num-gpus 0 is GluonCV's "one device" (there: the CPU; here the device kind is --device).
    assert recipe.choose_contexts(horovod_worker, "gpu", 0) == [mx.gpu(3)]


def test_batch_split_follows_gluoncv_and_leaves_idle_devices_out():
    assert split_sizes(7, 3) == [3, 2, 2] and split_sizes(2, 4) == [1, 1, 0, 0]
    data, label = mx.nd.arange(14).reshape((7, 2)), mx.nd.arange(7)
    contexts = [mx.cpu(0), mx.cpu(1), mx.cpu(2)]
    parts = split_and_load((data, label), contexts)
    assert [(part[0].context, part[1].asnumpy().tolist()) for part in parts] == [
        (mx.cpu(0), [0, 1, 2]), (mx.cpu(1), [3, 4]), (mx.cpu(2), [5, 6])]
    reference = mx.gluon.utils.split_and_load(data, contexts, even_split=False)
    assert [p[0].asnumpy().tolist() for p in parts] == [r.asnumpy().tolist() for r in reference]
    assert [p[0].shape[0] for p in split_and_load((data[:2],), contexts)] == [1, 1]


def _train_loop(contexts, local_batch_size=2):
    """One epoch of ElasticLoop over 6 fixed samples: a dense layer, L2 loss, SGD."""
    import argparse

    import numpy as np
    from mxnet import gluon

    from gluon_elastic import ElasticTrainer, flags
    from gluon_elastic.data import ElasticSampler

    parser = argparse.ArgumentParser()
    recipe.add_run_args(parser)
    flags.add_elastic_args(parser, local_batch_size=local_batch_size, lr=0.5)
    args = parser.parse_args(["--log-interval", "0"])
    args.epochs = 1
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(0.25), ctx=contexts)
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5},
                             local_batch_size=local_batch_size)
    rng = np.random.RandomState(0)
    data, label = mx.nd.array(rng.randn(6, 3)), mx.nd.array(rng.randn(6, 2))
    loss = gluon.loss.L2Loss()

    def make_loader(batch_indices, _epoch):
        for indices in batch_indices:
            yield data[mx.nd.array(indices)], label[mx.nd.array(indices)]

    loop = recipe.ElasticLoop(args, net, trainer, ElasticSampler(6, seed=1), make_loader,
                              lambda net, shard: loss(net(shard[0]), shard[1]),
                              lambda net, indices: None, lambda statistics: {}, 0,
                              contexts=contexts)
    loop.run()
    return net, trainer


def test_devices_without_samples_add_nothing():
    """Batches of 2 on 3 devices: the third device gets no sample and a zero gradient (not a
    stale-gradient error); the weights are those of one device on the same batches."""
    import numpy as np

    one, one_trainer = _train_loop([mx.cpu(0)])
    three, three_trainer = _train_loop([mx.cpu(0), mx.cpu(1), mx.cpu(2)])
    assert one_trainer.iteration == three_trainer.iteration == 3
    for single, several in zip(one.collect_params().values(), three.collect_params().values()):
        assert not np.allclose(single.data().asnumpy(), 0.25)
        for copy in several.list_data():
            np.testing.assert_allclose(copy.asnumpy(), single.data().asnumpy(), rtol=1e-6,
                                       atol=1e-7)


@pytest.mark.parametrize("local_batch_size, num_devices, device, message", [
    (2, 2, "cpu", "over 2 CPU contexts: MXNet's SyncBatchNorm deadlocks"),
    (3, 4, "gpu", "the per-worker batch 3 leaves a device without samples"),
])
def test_sync_batch_norm_refuses_what_would_hang(capsys, local_batch_size, num_devices, device,
                                                 message):
    import argparse

    from gluon_elastic.devices import check_sync_batch_norm, sync_batch_norm

    parser = argparse.ArgumentParser(prog="recipe")
    with pytest.raises(SystemExit) as exit_info:
        check_sync_batch_norm(parser, "--syncbn", local_batch_size, num_devices, device)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # What runs: one CPU context, or GPUs with a sample for each.
    check_sync_batch_norm(parser, "--syncbn", 4, 1, "cpu")
    check_sync_batch_norm(parser, "--syncbn", 4, 4, "gpu")
    kwargs = sync_batch_norm(4)
    assert kwargs["norm_layer"] is mx.gluon.contrib.nn.SyncBatchNorm
    assert kwargs["norm_kwargs"] == {"num_devices": 4}
