"""Parameters on several devices of one process: the same training as on one device.

MXNet treats ``cpu(0)`` and ``cpu(1)`` as distinct contexts (a copy of every parameter and
gradient each), so the multi-device paths of the trainer run here without a GPU. A model without
BatchNorm trained on a batch split over 2 devices must follow, to 1e-6, the same model trained on
the whole batch on one device; every device must hold the same weights after every step.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends
from gluon_elastic.devices import split_and_load

BATCH = 6


def make_net(contexts):
    """Two dense layers with fixed weights (no BatchNorm: per-device batches change nothing)."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=3, activation="tanh"), gluon.nn.Dense(2, in_units=4))
    net.initialize(ctx=contexts)
    rng = np.random.RandomState(7)
    for param in net.collect_params().values():
        param.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, size=param.shape)))
    return net


def batch(step):
    rng = np.random.RandomState(100 + step)
    return (mx.nd.array(rng.randn(BATCH, 3)), mx.nd.array(rng.randn(BATCH, 2)))


def forward_backward(net, contexts, step):
    """GluonCV's multi-device step: split the batch, one loss per device, backward together."""
    loss_fn = gluon.loss.L2Loss()
    with autograd.record():
        losses = [loss_fn(net(data), label)
                  for data, label in split_and_load(batch(step), contexts)]
    autograd.backward(losses)


def clip_every_device(net, max_norm):
    """Clip by global norm on each device (every device holds the same reduced gradient)."""
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    for index in range(len(params[0].list_grad())):
        gluon.utils.clip_global_norm([p.list_grad()[index] for p in params], max_norm)


def train(contexts, kvstore, optimizer, optimizer_params, steps=4):
    """Alternate step() with allreduce_grads() + clip + update(); returns the weights per device."""
    net = make_net(contexts)
    trainer = ElasticTrainer(net.collect_params(), optimizer, dict(optimizer_params),
                             kvstore=kvstore, local_batch_size=BATCH)
    for step in range(steps):
        forward_backward(net, contexts, step)
        if step % 2:
            trainer.allreduce_grads()
            clip_every_device(net, 0.05)
            trainer.update()
        else:
            trainer.step()
    return net, trainer


def weights(net):
    """``[device][parameter]`` numpy copies."""
    params = list(net.collect_params().values())
    return [[p.list_data()[index].asnumpy() for p in params]
            for index in range(len(params[0].list_data()))]


OPTIMIZERS = [("sgd", {"learning_rate": 0.5, "momentum": 0.9, "wd": 1e-3}),
              ("nag", {"learning_rate": 0.5, "momentum": 0.9, "wd": 1e-3}),
              ("adam", {"learning_rate": 0.05, "wd": 1e-3})]


@pytest.mark.parametrize("kvstore", ["device", "local", None])
@pytest.mark.parametrize("optimizer, optimizer_params", OPTIMIZERS)
def test_two_devices_train_like_one_on_the_same_batch(kvstore, optimizer, optimizer_params):
    """Local backend with Gluon's device store, its CPU store, and no store (the backend sums
    the devices itself, as the Horovod backend does before its all-reduce)."""
    one, _ = train([mx.cpu(0)], kvstore, optimizer, optimizer_params)
    two, _ = train([mx.cpu(0), mx.cpu(1)], kvstore, optimizer, optimizer_params)
    expected = weights(one)[0]
    initial = weights(make_net([mx.cpu(0)]))[0]
    assert all(np.abs(w - w0).max() > 1e-3 for w, w0 in zip(expected, initial))  # it trained
    for device in weights(two):
        for got, want in zip(device, expected):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_states_of_one_device_continue_on_two():
    """Adam's bias correction counts updates per device id: a states file written on cpu(0)
    must give cpu(1) the same counts, and the next step the same weights on both."""
    params = ("adam", {"learning_rate": 0.05})
    one, one_trainer = train([mx.cpu(0)], "device", *params, steps=2)
    payload = one_trainer.states_bytes()
    two = make_net([mx.cpu(0), mx.cpu(1)])
    for source, target in zip(one.collect_params().values(), two.collect_params().values()):
        target.set_data(source.data())
    two_trainer = ElasticTrainer(two.collect_params(), "adam", {"learning_rate": 0.05},
                                 kvstore="device", local_batch_size=BATCH)
    two_trainer.load_states_bytes(payload)
    for net, contexts, trainer in ((one, [mx.cpu(0)], one_trainer),
                                   (two, [mx.cpu(0), mx.cpu(1)], two_trainer)):
        forward_backward(net, contexts, 2)
        trainer.step()
    expected = weights(one)[0]
    for device in weights(two):
        for got, want in zip(device, expected):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert two_trainer.optimizer_counters()["num_update"] == 3


def test_optimizer_counters_reach_every_device():
    """What ElasticState.sync sends a joining worker: its counters survive the next update."""
    _, source = train([mx.cpu(0)], "device", "adam", {"learning_rate": 0.05}, steps=3)
    net = make_net([mx.cpu(0), mx.cpu(1)])
    trainer = ElasticTrainer(net.collect_params(), "adam", {"learning_rate": 0.05},
                             kvstore="device", local_batch_size=BATCH)
    trainer.load_optimizer_counters(source.optimizer_counters())
    forward_backward(net, [mx.cpu(0), mx.cpu(1)], 0)
    trainer.step()
    counts = trainer.optimizer._all_index_update_counts  # pylint: disable=protected-access
    assert sorted(counts) == [0, 1]
    assert all(count == 4 for device in counts.values() for count in device.values())


def test_horovod_backend_sums_devices_before_the_all_reduce():
    """The Horovod backend's reduction, with a stand-in for Horovod's all-reduce sum over 3
    workers (each holding this worker's values): device gradients 1 and 2 become 3 * (1 + 2)."""
    from gluon_elastic.backends.horovod import HorovodBackend

    class ThreeWorkers:
        @staticmethod
        def size():
            return 3

        @staticmethod
        def allreduce_(array, average, name, priority):
            assert not average and name.startswith("grad.")
            array *= 3

    backend = HorovodBackend.__new__(HorovodBackend)    # no hvd.init(): only the reduction runs
    backend._hvd = ThreeWorkers()   # pylint: disable=protected-access
    backend._joined = True          # pylint: disable=protected-access
    param = gluon.Parameter("w", shape=(2,))
    param.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    for value, grad in zip((1.0, 2.0), param.list_grad()):
        grad[:] = value
    backend.allreduce_grads([param])
    for grad in param.list_grad():
        assert grad.asnumpy().tolist() == [9.0, 9.0]
