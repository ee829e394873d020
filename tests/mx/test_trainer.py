"""ElasticTrainer behaviour in one process: normalisation, LR, errors, logging, saved state."""
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, Schedule, backends
from gluon_elastic.trainer import STATE_FORMAT


def dense(value=1.0, ctx=None):
    net = gluon.nn.Dense(1, in_units=3, use_bias=False)
    net.initialize(mx.init.Constant(value), ctx=ctx)
    return net


def closed_form_step(net, trainer, world_size, local_batch_size, ctx=mx.cpu()):
    """Per-sample gradient of virtual rank r is r + 1 (loss = (r + 1) * sum(w) per sample)."""
    with autograd.record():
        loss = mx.nd.zeros((1,), ctx=ctx)
        for rank in range(world_size):
            x = mx.nd.ones((local_batch_size, 3), ctx=ctx)
            loss = loss + (rank + 1) * net(x).sum()
    loss.backward()
    trainer.step()


def test_update_is_mean_over_global_batch():
    backend = backends.create("device", world_size=4)
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore=backend,
                             local_batch_size=3)
    closed_form_step(net, trainer, 4, 3)
    # mean gradient (1 + 2 + 3 + 4) / 4 = 2.5
    np.testing.assert_allclose(net.weight.data().asnumpy(), 1 - 0.1 * 2.5, rtol=1e-6)


def test_two_devices_in_one_process_reduce_to_the_mean():
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = dense(ctx=ctxs)
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1},
                             kvstore="device", local_batch_size=4)
    with autograd.record():
        losses = [(i + 1) * net(mx.nd.ones((2, 3), ctx=c)).sum() for i, c in enumerate(ctxs)]
    autograd.backward(losses)
    trainer.step(4)
    # 2 samples with gradient 1 and 2 samples with gradient 2 on one worker: mean 1.5.
    for ctx in ctxs:
        np.testing.assert_allclose(net.weight.data(ctx).asnumpy(), 1 - 0.15, rtol=1e-6)


def test_linear_scaling_follows_world_and_logs_one_line(caplog):
    backend = backends.create("device", world_size=2)
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                             kvstore=backend, local_batch_size=8, ramp_iters=4)
    assert trainer.global_batch_size == 16 and trainer.base_batch_size == 16
    closed_form_step(net, trainer, 2, 8)
    backend.set_world_size(6)
    with caplog.at_level(logging.INFO, logger="gluon_elastic"):
        lrs = []
        for _ in range(6):
            lrs.append(trainer.learning_rate)
            closed_form_step(net, trainer, 6, 8)
    assert lrs == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3, 0.3])
    changes = [r.getMessage() for r in caplog.records if "world change" in r.getMessage()]
    assert len(changes) == 1
    assert "world 2 -> 6" in changes[0] and "k=3" in changes[0]
    assert "target 0.3" in changes[0] and "ramp over 4 iterations" in changes[0]
    assert trainer.global_batch_size == 48 and not trainer.in_ramp


def test_fixed_global_batch_keeps_lr_and_splits_batch():
    backend = backends.create("device", world_size=2)
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore=backend,
                             batch_policy="fixed_global", global_batch_size=12)
    assert trainer.local_batch_size == 6
    backend.set_world_size(3)
    assert trainer.local_batch_size == 4 and trainer.learning_rate == pytest.approx(0.1)


def test_short_tail_batch_is_normalised_by_its_global_size():
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, local_batch_size=8)
    with autograd.record():
        loss = 2 * net(mx.nd.ones((3, 3))).sum()
    loss.backward()
    trainer.step(3, global_batch_size=3)
    np.testing.assert_allclose(net.weight.data().asnumpy(), 1 - 0.2, rtol=1e-6)
    assert trainer.progress == 3 and trainer.iteration == 1


def test_wrong_batch_size_is_refused_with_the_plan():
    trainer = ElasticTrainer(dense().collect_params(), "sgd", local_batch_size=8)
    with pytest.raises(ValueError, match="batch_size=5 differs .* planned batch 8"):
        trainer.step(5)


@pytest.mark.parametrize("kwargs, name", [
    ({"optimizer_params": {"learning_rate": 0.1, "lr_scheduler": mx.lr_scheduler.FactorScheduler(10)}},
     "lr_scheduler"),
    ({"optimizer_params": {"learning_rate": -0.1}}, "learning_rate"),
    ({"update_on_kvstore": True}, "update_on_kvstore"),
    ({"batch_policy": "fixed_everything"}, "batch policy"),
    ({"local_batch_size": 0}, "local_batch_size"),
    ({"scaling": "log"}, "scaling"),
    ({"transition": "slow"}, "transition"),
    ({"ramp_iters": -2}, "ramp_iters"),
    ({"kvstore": "horovod_sync"}, "backend"),
])
def test_bad_arguments_are_named(kwargs, name):
    args = {"optimizer_params": {"learning_rate": 0.1}, "local_batch_size": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        ElasticTrainer(dense().collect_params(), "sgd", **args)


def test_lr_scheduler_on_optimizer_object_is_refused():
    optimizer = mx.optimizer.SGD(learning_rate=0.1, lr_scheduler=mx.lr_scheduler.FactorScheduler(5))
    with pytest.raises(ValueError, match="schedule=gluon_elastic.Schedule"):
        ElasticTrainer(dense().collect_params(), optimizer, local_batch_size=4)


def test_set_learning_rate_sets_the_applied_lr():
    backend = backends.create("device", world_size=1)
    trainer = ElasticTrainer(dense().collect_params(), "sgd", {"learning_rate": 0.1},
                             kvstore=backend, local_batch_size=4, transition="immediate")
    backend.set_world_size(2)
    assert trainer.learning_rate == pytest.approx(0.2)
    trainer.set_learning_rate(0.05)
    assert trainer.learning_rate == pytest.approx(0.05)
    backend.set_world_size(4)
    assert trainer.learning_rate == pytest.approx(0.1)
    scheduled = ElasticTrainer(dense().collect_params(), "sgd", local_batch_size=4,
                               schedule=Schedule("cosine", 0.1, total_samples=100))
    with pytest.raises(ValueError, match="cosine"):
        scheduled.set_learning_rate(0.01)


def _run(trainer, net, backend, worlds):
    for world in worlds:
        backend.set_world_size(world)
        closed_form_step(net, trainer, world, 2)


def test_saved_state_resumes_the_same_trajectory(tmp_path):
    def build():
        backend = backends.create("device", world_size=1)
        net = dense()
        trainer = ElasticTrainer(net.collect_params(), "nag", {"learning_rate": 0.05,
                                 "momentum": 0.9, "wd": 0.01}, kvstore=backend,
                                 local_batch_size=2, ramp_iters=6)
        return backend, net, trainer

    worlds = [1, 1, 4, 4, 4, 2, 2, 2, 5, 5]
    backend, net, trainer = build()
    _run(trainer, net, backend, worlds)
    straight = net.weight.data().asnumpy()

    backend, net, trainer = build()
    _run(trainer, net, backend, worlds[:4])
    trainer.save_states(str(tmp_path / "trainer.states"))
    net.save_parameters(str(tmp_path / "net.params"))
    backend2, net2, trainer2 = build()
    net2.load_parameters(str(tmp_path / "net.params"))
    backend2.set_world_size(4)
    trainer2.load_states(str(tmp_path / "trainer.states"))
    assert trainer2.iteration == 4 and trainer2.progress == 2 * (1 + 1 + 4 + 4)
    assert trainer2.transition.state_dict() == trainer.transition.state_dict()
    _run(trainer2, net2, backend2, worlds[4:])
    np.testing.assert_allclose(net2.weight.data().asnumpy(), straight, rtol=1e-6)


def test_loading_state_into_a_new_world_starts_the_transition(tmp_path, caplog):
    backend = backends.create("device", world_size=2)
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                             kvstore=backend, local_batch_size=2, ramp_iters=10)
    _run(trainer, net, backend, [2, 2])
    trainer.save_states(str(tmp_path / "s"))
    backend3 = backends.create("device", world_size=6)
    trainer3 = ElasticTrainer(dense().collect_params(), "sgd", {"learning_rate": 0.1,
                              "momentum": 0.9}, kvstore=backend3, local_batch_size=2, ramp_iters=10)
    with caplog.at_level(logging.INFO, logger="gluon_elastic"):
        trainer3.load_states(str(tmp_path / "s"))
    assert trainer3.base_batch_size == 4
    assert trainer3.learning_rate == pytest.approx(0.1)  # gamma = 1 at t0
    assert trainer3.transition.target_multiplier == 3.0 and trainer3.in_ramp
    assert any("world 2 -> 6" in r.getMessage() for r in caplog.records)


def test_damaged_state_file_is_named(tmp_path):
    trainer = ElasticTrainer(dense().collect_params(), "sgd", local_batch_size=2)
    bad = tmp_path / "bad.states"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.states"):
        trainer.load_states(str(bad))


def test_newer_state_version_is_refused(tmp_path):
    import pickle
    trainer = ElasticTrainer(dense().collect_params(), "sgd", local_batch_size=2)
    states, optimizer = pickle.loads(trainer.states_bytes())
    assert optimizer.gluon_elastic["format"] == STATE_FORMAT
    optimizer.gluon_elastic["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        trainer.load_states_bytes(pickle.dumps((states, optimizer)), source="future.states")


def test_update_without_allreduce_grads_is_refused():
    trainer = ElasticTrainer(dense().collect_params(), "sgd", local_batch_size=2)
    with pytest.raises(ValueError, match="allreduce_grads"):
        trainer.update(2)


@pytest.mark.parametrize("optimizer, params, dtype, per_param", [
    ("adam", {"learning_rate": 0.1}, "float32", 2),                         # mean, variance
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9, "multi_precision": True}, "float16", 2),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9}, "float32", 1),
])
def test_optimizer_state_arrays_hold_every_state_array(optimizer, params, dtype, per_param):
    """What ElasticState.sync sends: every array of every state, not only the momentum."""
    net = gluon.nn.Dense(1, in_units=3)
    net.initialize(mx.init.Constant(1.0))
    net.cast(dtype)
    trainer = ElasticTrainer(net.collect_params(), optimizer, params, local_batch_size=2)
    arrays = trainer.optimizer_state_arrays()
    assert len(arrays) == 2 * per_param   # weight and bias
    assert len(trainer.momentum_arrays()) == 2
    if dtype == "float16":
        # (momentum, fp32 master weight) per parameter, all float32; the weight's master sums
        # to 3 (three ones), the bias's and both momenta to 0.
        assert [str(np.dtype(a.dtype)) for a in arrays] == ["float32"] * 4
        assert sorted(float(a.asnumpy().sum()) for a in arrays) == [0.0, 0.0, 0.0, 3.0]


def test_automatic_ramp_takes_the_optimizers_momentum():
    from gluon_elastic.flags import add_elastic_args, trainer_kwargs
    from gluon_elastic.policy import auto_ramp_length
    import argparse

    parser = argparse.ArgumentParser()
    add_elastic_args(parser)
    args = parser.parse_args(["--ramp-iters", "auto", "--local-batch-size", "2"])
    backend = backends.create("device", world_size=1)
    net = dense()
    trainer = ElasticTrainer(net.collect_params(), "nag", {"learning_rate": 0.1,
                             "momentum": 0.9}, kvstore=backend, **trainer_kwargs(args))
    closed_form_step(net, trainer, 1, 2)
    backend.set_world_size(4)
    closed_form_step(net, trainer, 4, 2)
    assert trainer.transition.ramp_len == auto_ramp_length(4.0, 0.9) > 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--ramp-iters", "soon"])
