"""ElasticTrainer where gluon.Trainer code goes: LR through 0, KVStore objects, allreduce_grads ->
clip -> update, .states files both ways, float16 Nesterov, sparse parameters, the README example.

References are float64 numpy implementations of the u-form equations (Eq. 3 of Lin et al.):
``u <- mu u + g'``; ``w <- w - lr u`` (sgd) or ``w <- w - lr (g' + mu u)`` (nag), with
``g' = mean gradient over the global batch + wd w``.
"""
import os
import pickle
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, Schedule, backends, optimizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM, LOCAL_BATCH_SIZE, MU, WD = 5, 4, 0.9, 0.01


def linear_net(w0, dtype="float32", ctx=None):
    net = gluon.nn.Dense(1, in_units=DIM, use_bias=False)
    net.initialize(ctx=ctx)
    net.weight.set_data(mx.nd.array(w0.reshape(1, DIM)))
    if dtype != "float32":
        net.cast(dtype)
    return net


def make_batches(worlds, seed=0):
    rng = np.random.RandomState(seed)
    w_true = rng.randn(DIM)
    batches = []
    for world in worlds:
        x = rng.randn(world * LOCAL_BATCH_SIZE, DIM)
        batches.append((x, x @ w_true + 0.1 * rng.randn(len(x))))
    return batches


def backward(net, x, y, dtype="float32"):
    """Sum of per-sample squared errors: the reduction's sum over the global batch."""
    with autograd.record():
        out = net(mx.nd.array(x, dtype=dtype)).reshape(-1)
        loss = 0.5 * ((out - mx.nd.array(y, dtype=dtype)) ** 2).sum()
    loss.backward()


def u_form(batches, lrs, optimizer, w0, clip_norm=None, grads=None, wd=WD):
    """float64 u-form reference; ``grads`` replaces the computed mean gradients when given."""
    w, u, out = w0.astype(np.float64).copy(), np.zeros(DIM), []
    for step, ((x, y), lr) in enumerate(zip(batches, lrs)):
        grad = x.T @ (x @ w - y) / len(y) if grads is None else grads[step]
        if clip_norm is not None:  # mxnet.gluon.utils.clip_global_norm
            grad = grad * min(1.0, clip_norm / (np.linalg.norm(grad) + 1e-8))
        grad = grad + wd * w
        u = MU * u + grad
        w = w - lr * (grad + MU * u) if optimizer == "nag" else w - lr * u
        out.append(w.copy())
    return out


class Piecewise:
    """A base schedule (LR per progress in samples) that returns to 0 in the middle of training."""

    mode, warmup_samples = "piecewise", 0

    def __call__(self, progress):
        if progress < 12:
            return 0.0
        if progress < 100:
            return 0.05
        if progress < 160:
            return 0.0
        return 0.03


SCHEDULES = {
    # Warmup from 0 (GluonCV's default), a world change inside it, cosine down to 0 at the end.
    "warmup_from_0": (Schedule("cosine", base_lr=0.05, warmup_samples=40, warmup_lr=0.0,
                               total_samples=300, final_lr=0.0), [1] * 3 + [3] * 14 + [2] * 17),
    # LR 0 for 3 steps, positive, 0 again for several steps (a world change among them), positive.
    "zero_in_the_middle": (Piecewise(), [1] * 3 + [2] * 11 + [3] * 5 + [1] * 15),
}


@pytest.mark.parametrize("optimizer", ["sgd", "nag"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lr_through_zero_follows_the_u_form(name, optimizer):
    schedule, worlds = SCHEDULES[name]
    batches = make_batches(worlds)
    w0 = np.random.RandomState(1).randn(DIM)
    backend = backends.create("device", world_size=worlds[0])
    net = linear_net(w0)
    trainer = ElasticTrainer(net.collect_params(), optimizer, {"momentum": MU, "wd": WD},
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE,
                             schedule=schedule, ramp_iters=4)
    got, lrs = [], []
    for (x, y), world in zip(batches, worlds):
        backend.set_world_size(world)
        lrs.append(trainer.learning_rate)
        backward(net, x, y)
        trainer.step()
        got.append(net.weight.data().asnumpy().ravel())
    assert len(got) >= 30
    zero_steps = [step for step, lr in enumerate(lrs) if lr == 0]
    # LR 0 is crossed: a step at 0 is followed by a step above 0.
    assert any(lrs[step + 1] > 0 for step in zero_steps if step + 1 < len(lrs))
    expected = u_form(batches, lrs, optimizer, w0)
    for step, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg="step %d" % step)


def test_lr_zero_steps_change_the_buffer_not_the_weight():
    # With momentum correction off (MXNet's v-form), LR 0 gives v <- mu v: the u-form above is
    # not what the plain kernels do, so the check above could not pass by accident.
    schedule, worlds = SCHEDULES["zero_in_the_middle"]
    batches = make_batches(worlds)
    w0 = np.random.RandomState(1).randn(DIM)
    runs = []
    for correction in (True, False):
        backend = backends.create("device", world_size=worlds[0])
        net = linear_net(w0)
        trainer = ElasticTrainer(net.collect_params(), "sgd", {"momentum": MU, "wd": WD},
                                 kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE,
                                 schedule=schedule, ramp_iters=4, momentum_correction=correction)
        for (x, y), world in zip(batches, worlds):
            backend.set_world_size(world)
            backward(net, x, y)
            trainer.step()
        runs.append(net.weight.data().asnumpy().ravel())
    assert np.abs(runs[0] - runs[1]).max() > 1e-2


def _two_device_run(trainer_factory, steps=3):
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = gluon.nn.Dense(1, in_units=3, use_bias=False)
    net.initialize(mx.init.One(), ctx=ctxs)
    trainer = trainer_factory(net)
    for _ in range(steps):
        with autograd.record():
            losses = [net(mx.nd.ones((2, 3), ctx=ctx) * (i + 1.3)).sum()
                      for i, ctx in enumerate(ctxs)]
        autograd.backward(losses)
        trainer.step(4)
    return net.weight.data(ctxs[0]).asnumpy()


def _store(compress):
    store = mx.kv.create("device")
    if compress:
        store.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    return store


def test_kvstore_object_keeps_its_gradient_compression():
    params = {"learning_rate": 0.1, "momentum": 0.9}
    results = {}
    for compress in (False, True):
        results["gluon", compress] = _two_device_run(
            lambda net, c=compress: gluon.Trainer(net.collect_params(), "sgd", dict(params),
                                                  kvstore=_store(c)))
        results["elastic", compress] = _two_device_run(
            lambda net, c=compress: ElasticTrainer(net.collect_params(), "sgd", dict(params),
                                                   kvstore=_store(c), local_batch_size=4))
    assert np.abs(results["gluon", True] - results["gluon", False]).max() > 0.1
    for compress in (False, True):
        np.testing.assert_array_equal(results["elastic", compress], results["gluon", compress])


def _trainer_run(optimizer, world, split, clip_norm=None, steps=6):
    """Weights after ``steps`` steps on an emulated world, through step() or the split API."""
    worlds = [world] * steps
    batches = make_batches(worlds, seed=3)
    w0 = np.random.RandomState(2).randn(DIM)
    backend = backends.create("device", world_size=world)
    net = linear_net(w0)
    params = {"learning_rate": 0.05, "wd": WD}
    if optimizer != "adam":
        params["momentum"] = MU
    trainer = ElasticTrainer(net.collect_params(), optimizer, params,
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE)
    for x, y in batches:
        backward(net, x, y)
        if split:
            trainer.allreduce_grads()
            if clip_norm is not None:
                gluon.utils.clip_global_norm([net.weight.grad()], clip_norm)
            trainer.update(LOCAL_BATCH_SIZE)
        else:
            trainer.step()
    assert trainer.iteration == steps and trainer.progress == steps * world * LOCAL_BATCH_SIZE
    return net.weight.data().asnumpy().ravel(), batches, w0


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam"])
@pytest.mark.parametrize("world", [1, 3])
def test_allreduce_grads_then_update_equals_step(optimizer, world):
    stepped, _, _ = _trainer_run(optimizer, world, split=False)
    split, _, _ = _trainer_run(optimizer, world, split=True)
    np.testing.assert_allclose(split, stepped, rtol=1e-6, atol=1e-6)


def test_allreduce_grads_leaves_the_mean_for_a_global_norm_clip():
    got, batches, w0 = _trainer_run("sgd", 1, split=True, clip_norm=0.5)
    expected = u_form(batches, [0.05] * len(batches), "sgd", w0, clip_norm=0.5)[-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    unclipped = u_form(batches, [0.05] * len(batches), "sgd", w0)[-1]
    assert np.abs(unclipped - expected).max() > 1e-2   # the clip is active


def test_allreduce_grads_twice_is_refused():
    net = linear_net(np.ones(DIM))
    trainer = ElasticTrainer(net.collect_params(), "sgd", local_batch_size=LOCAL_BATCH_SIZE)
    backward(net, np.ones((4, DIM)), np.ones(4))
    trainer.allreduce_grads()
    with pytest.raises(ValueError, match="update"):
        trainer.allreduce_grads()
    with pytest.raises(ValueError, match="global_batch_size=5"):
        trainer.update(global_batch_size=5)


# ------------------------------------------------------------------------------- .states files
def _train(trainer, net, steps, seed=0):
    for x, y in make_batches([1] * steps, seed=seed):
        backward(net, x, y)
        trainer.step(LOCAL_BATCH_SIZE)


def _states(trainer):
    return [a.asnumpy() for a in sorted(
        (s[0] if isinstance(s, tuple) else s for s in trainer._updaters[0].states.values()),  # pylint: disable=protected-access
        key=id)]


def _assert_same_continuation(plain, plain_net, elastic, elastic_net):
    """Both trainers, from the same weights and optimizer state, go on by the same two steps."""
    _train(plain, plain_net, 2, seed=9)
    _train(elastic, elastic_net, 2, seed=9)
    np.testing.assert_allclose(elastic_net.weight.data().asnumpy(),
                               plain_net.weight.data().asnumpy(), rtol=1e-6)


@pytest.mark.parametrize("dump_optimizer", [True, False])
def test_gluon_states_load_into_elastic_trainer(tmp_path, dump_optimizer):
    w0 = np.random.RandomState(4).randn(DIM)
    params = {"learning_rate": 0.05, "momentum": MU, "wd": WD}
    net = linear_net(w0)
    plain = gluon.Trainer(net.collect_params(), "sgd", dict(params))
    _train(plain, net, 3)
    path = str(tmp_path / "gluon.states")
    if dump_optimizer:
        plain.save_states(path)
    else:
        with open(path, "wb") as fout:
            fout.write(plain._updaters[0].get_states(dump_optimizer=False))  # pylint: disable=protected-access
    net2 = linear_net(net.weight.data().asnumpy().ravel())
    elastic = ElasticTrainer(net2.collect_params(), "sgd", dict(params),
                             local_batch_size=LOCAL_BATCH_SIZE)
    elastic.load_states(path, iteration=3, progress=12)
    momentum = plain._updaters[0].states[0].asnumpy()  # pylint: disable=protected-access
    np.testing.assert_array_equal(elastic.momentum_arrays()[0].asnumpy(), momentum)
    assert (elastic.iteration, elastic.progress) == (3, 12)
    assert elastic.optimizer.num_update == (3 if dump_optimizer else 0)
    _assert_same_continuation(plain, net, elastic, net2)


def test_gluon_states_without_position_start_at_zero(tmp_path):
    net = linear_net(np.ones(DIM))
    plain = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": MU})
    _train(plain, net, 2)
    plain.save_states(str(tmp_path / "g.states"))
    elastic = ElasticTrainer(linear_net(np.ones(DIM)).collect_params(), "sgd",
                             {"learning_rate": 0.2, "momentum": MU},
                             local_batch_size=LOCAL_BATCH_SIZE)
    elastic.load_states(str(tmp_path / "g.states"))
    assert (elastic.iteration, elastic.progress) == (0, 0)
    # The buffer was built at LR 0.1 (v = -0.1 u); the next step at 0.2 rescales it by 2.
    before = elastic.momentum_arrays()[0].asnumpy()
    elastic.step(0, global_batch_size=LOCAL_BATCH_SIZE)  # a zero gradient
    np.testing.assert_allclose(elastic.momentum_arrays()[0].asnumpy(), MU * 2 * before,
                               rtol=1e-6)


@pytest.mark.parametrize("optimizer, wd", [("sgd", WD), ("nag", 0.0)])
def test_elastic_states_load_into_gluon_trainer(tmp_path, optimizer, wd):
    w0 = np.random.RandomState(5).randn(DIM)
    params = {"learning_rate": 0.05, "momentum": MU, "wd": wd}
    net = linear_net(w0)
    elastic = ElasticTrainer(net.collect_params(), optimizer, dict(params),
                             local_batch_size=LOCAL_BATCH_SIZE)
    _train(elastic, net, 3)
    elastic.save_states(str(tmp_path / "elastic.states"))
    net2 = linear_net(net.weight.data().asnumpy().ravel())
    plain = gluon.Trainer(net2.collect_params(), optimizer, dict(params))
    plain.load_states(str(tmp_path / "elastic.states"))
    assert type(plain.optimizer) in (mx.optimizer.SGD, mx.optimizer.NAG)  # plain MXNet classes
    assert plain.optimizer.num_update == 3
    np.testing.assert_array_equal(plain._updaters[0].states[0].asnumpy(),  # pylint: disable=protected-access
                                  elastic.momentum_arrays()[0].asnumpy())
    _assert_same_continuation(plain, net2, elastic, net)


def test_states_of_another_model_are_refused(tmp_path):
    net = linear_net(np.ones(DIM))
    plain = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": MU})
    _train(plain, net, 1)
    plain.save_states(str(tmp_path / "g.states"))
    other = gluon.nn.Dense(1, in_units=DIM + 1, use_bias=False)
    other.initialize()
    elastic = ElasticTrainer(other.collect_params(), "sgd", {"momentum": MU},
                             local_batch_size=LOCAL_BATCH_SIZE)
    with pytest.raises(ValueError, match="g.states.*shapes"):
        elastic.load_states(str(tmp_path / "g.states"))


# ----------------------------------------------------------------------------- float16 nag
def _fp16_nag_run(trainer_class, steps=32, lr=0.2, wd=0.01):
    """Largest distance of the fp32 master weights from the reference over ``steps`` steps."""
    w0 = np.random.RandomState(6).randn(DIM) * 0.5
    # MXNet's CPU Dense has no float16 kernel; elementwise operators do.
    weight = gluon.Parameter("weight", shape=(DIM,), dtype="float16")
    weight.initialize()
    weight.set_data(mx.nd.array(w0, dtype="float16"))
    params = {"learning_rate": lr, "momentum": MU, "wd": wd, "multi_precision": True}
    if trainer_class is ElasticTrainer:
        trainer = ElasticTrainer([weight], "nag", params, local_batch_size=LOCAL_BATCH_SIZE)
    else:
        trainer = gluon.Trainer([weight], "nag", params)
    master0 = weight.data().asnumpy().astype(np.float64)
    grads, masters = [], []
    batches = make_batches([1] * steps, seed=7)
    for x, y in batches:
        with autograd.record():
            out = mx.nd.broadcast_mul(mx.nd.array(x, dtype="float16"),
                                      weight.data().reshape(1, DIM)).sum(axis=1)
            loss = 0.5 * ((out - mx.nd.array(y, dtype="float16")) ** 2).sum()
        loss.backward()
        # The reference uses the very float16 gradients the trainer reads.
        grads.append(weight.grad().asnumpy().astype(np.float64) / LOCAL_BATCH_SIZE)
        trainer.step(LOCAL_BATCH_SIZE)
        master = trainer._updaters[0].states[0][1]  # pylint: disable=protected-access
        masters.append(master.asnumpy().astype(np.float64))
        # The float16 weight is the master rounded to nearest (even), as MXNet casts.
        np.testing.assert_array_equal(weight.data().asnumpy(),
                                      master.asnumpy().astype(np.float16))
    expected = u_form(batches, [lr] * steps, "nag", master0, grads=grads, wd=wd)
    return max(np.abs(a - b).max() for a, b in zip(masters, expected))


@pytest.fixture(params=["compiled", "fallback"])
def nag_path(request, monkeypatch):
    """Run a test with ElasticNAG's compiled kernel, and again with its multi-kernel fallback."""
    if request.param == "compiled":
        assert optimizers.kernels.available(), "the compiled kernels did not build"
    else:
        monkeypatch.setattr(optimizers, "_kernel_fits", lambda weight, master: False)
    return request.param


def test_fp16_nag_master_weights_follow_the_reference(nag_path):
    assert _fp16_nag_run(ElasticTrainer) < 1e-5
    # MXNet's stock multi-precision kernel takes the decay from the updated weight.
    assert _fp16_nag_run(gluon.Trainer) > 1e-4


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_nag_paths_follow_the_u_form(nag_path, name):
    test_lr_through_zero_follows_the_u_form(name, "nag")


def test_nag_after_an_inference_pass_matches_the_fallback(monkeypatch):
    """MKLDNN re-lays out conv weights in inference; the compiled kernel must still read them."""
    results = []
    for fits in (optimizers._kernel_fits, lambda weight, master: False):  # pylint: disable=protected-access
        monkeypatch.setattr(optimizers, "_kernel_fits", fits)
        mx.random.seed(0)
        # A layer whose weight MKLDNN reorders in inference (seen with 32 -> 64 channels; the
        # kernel fails on such a weight unless it is turned back to the default layout first).
        net = gluon.nn.Conv2D(64, 3, in_channels=32)
        net.initialize(mx.init.Xavier())
        x = mx.nd.array(np.random.RandomState(0).randn(2, 32, 8, 8))
        trainer = ElasticTrainer(net.collect_params(), "nag",
                                 {"learning_rate": 0.1, "momentum": MU, "wd": WD},
                                 local_batch_size=2)
        for _ in range(3):
            net(x)  # inference: MKLDNN may reorder the weight in place
            with autograd.record():
                loss = (net(x) ** 2).mean()
            loss.backward()
            trainer.step()
        results.append(net.weight.data().asnumpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_stale_parameters_keep_their_buffers_in_u_form():
    """With ignore_stale_grad, a skipped parameter's buffer still follows a change of LR."""
    first, second = gluon.Parameter("a", shape=(2,)), gluon.Parameter("b", shape=(2,))
    for param in (first, second):
        param.initialize(mx.init.One())
    trainer = ElasticTrainer([first, second], "sgd", {"momentum": MU},
                             schedule=Schedule("step", base_lr=0.1, step_samples=[2],
                                               step_factor=0.5), local_batch_size=2)
    with autograd.record():
        loss = (first.data() * 3).sum() + (second.data() * 5).sum()
    loss.backward()
    trainer.step()                                    # LR 0.1: v = -0.1 * g
    before = [a.asnumpy() for a in trainer.momentum_arrays()]
    with autograd.record():
        loss = (first.data() * 3).sum()
    loss.backward()
    trainer.step(ignore_stale_grad=True)              # LR 0.05; b is stale and skipped
    after = [a.asnumpy() for a in trainer.momentum_arrays()]
    np.testing.assert_allclose(after[1], 0.5 * before[1], rtol=1e-6)   # rescaled, not updated
    np.testing.assert_allclose(after[0], MU * 0.5 * before[0] - 0.05 * 1.5, rtol=1e-6)


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("block", [
    lambda: gluon.nn.Embedding(10, 4, sparse_grad=True),
])
def test_row_sparse_gradients_are_refused(block):
    net = block()
    net.initialize()
    with pytest.raises(ValueError, match="row_sparse.*updates on the KVStore"):
        ElasticTrainer(net.collect_params(), "sgd", local_batch_size=2)


def test_row_sparse_weights_are_refused():
    param = gluon.Parameter("table", shape=(10, 4), stype="row_sparse")
    param.initialize()
    with pytest.raises(ValueError, match="table.*row_sparse"):
        ElasticTrainer([param], "sgd", local_batch_size=2)


# --------------------------------------------------------------------------- README example
def test_readme_example_runs_as_written(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as fin:
        readme = fin.read()
    section = readme[readme.index("## Turning a Gluon training loop elastic"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(re.search(r"test accuracy (\S+)", done.stdout).group(1))
    assert accuracy > 0.85


# --------------------------------------------------------------------------------- AdaScale
def test_adascale_at_scale_one_is_plain_sgd():
    """One worker at the base batch: the gain is exactly 1, the weights are gluon.Trainer's."""
    w0 = np.random.RandomState(8).randn(DIM)
    params = {"learning_rate": 0.05, "momentum": MU, "wd": WD}
    results = []
    for make in (lambda net: gluon.Trainer(net.collect_params(), "sgd", dict(params)),
                 lambda net: ElasticTrainer(net.collect_params(), "sgd", dict(params),
                                            local_batch_size=LOCAL_BATCH_SIZE,
                                            scaling="adascale")):
        net = linear_net(w0)
        trainer = make(net)
        _train(trainer, net, 8)
        results.append(net.weight.data().asnumpy())
    np.testing.assert_array_equal(results[1], results[0])
    assert trainer.multiplier == 1.0 and trainer.schedule_progress == trainer.progress == 32


def test_adascale_refuses_emulated_workers_without_their_noise():
    backend = backends.create("device", world_size=3)
    net = linear_net(np.ones(DIM))
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"momentum": MU}, kvstore=backend,
                             local_batch_size=LOCAL_BATCH_SIZE, scaling="adascale")
    backward(net, np.ones((12, DIM)), np.ones(12))
    with pytest.raises(ValueError, match="worker_noise"):
        trainer.step()


def test_kernels_load_beside_horovod():
    """Horovod's MXNet module carries its own copy of MXNet's library-API classes; loading the
    kernels after it must bind to the library's own (it crashed while registering operators)."""
    pytest.importorskip("horovod.mxnet")
    code = ("import horovod.mxnet\n"
            "from gluon_elastic import kernels\n"
            "assert kernels.load(), 'the kernels did not load'\n"
            "print('loaded')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
