"""ElasticTrainer's trajectory against an independent numpy reference of the paper's equations.

The reference (float64) implements, for a linear least-squares model with weight decay:

* Eq. 3 (u-form):  u <- mu u + g' ;  w <- w - lr_t u          (momentum-corrected runs)
* Eq. 4 (v-form):  v <- mu v - lr_t g' ;  w <- w + v           (MXNet native, no correction)
* Nesterov, u-form: u <- mu u + g' ; w <- w - lr_t (g' + mu u); v-form likewise,

with ``g' = mean gradient over the global batch + wd w`` and ``lr_t = schedule(progress) * m_t``.
The multiplier ``m_t`` is recomputed here from Eq. 5/6 without gluon_elastic.policy: linear
scaling ``m = B / B0``, and after a change at ``t0`` from the multiplier in use ``m0`` to ``m1``
(``k = m1 / m0``): ``m_t = m0 (1 + (t - t0) / T (k - 1))`` for ``t - t0 < T``, ``m1`` afterwards.
"""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, Schedule, backends

DIM = 6
LOCAL_BATCH_SIZE = 4
# World size per step: 60 steps, changes up and down (2 -> 8 -> 3 -> 6 -> 1).
WORLDS = [2] * 10 + [8] * 15 + [3] * 15 + [6] * 10 + [1] * 10
MU, WD = 0.9, 0.01
SCHEDULE = dict(mode="cosine", base_lr=0.02, total_samples=3000, warmup_samples=64,
                warmup_lr=0.005, final_lr=0.002)


def base_lr(progress):
    """Cosine with linear warmup, written out independently of gluon_elastic.schedule."""
    s = SCHEDULE
    if progress < s["warmup_samples"]:
        return s["warmup_lr"] + (s["base_lr"] - s["warmup_lr"]) * progress / s["warmup_samples"]
    done = min(1.0, (progress - s["warmup_samples"]) / (s["total_samples"] - s["warmup_samples"]))
    return s["final_lr"] + (s["base_lr"] - s["final_lr"]) * (1 + math.cos(math.pi * done)) / 2


def multipliers(worlds, kind, ramp_iters=None, ramp_per_k=None, shrink="immediate"):
    base = worlds[0] * LOCAL_BATCH_SIZE
    out, m0, m1, t0, T = [], None, None, 0, 0

    def at(t):
        if t - t0 >= T:
            return m1
        return m0 * (1 + (t - t0) / T * (m1 / m0 - 1))

    for t, world in enumerate(worlds):
        target = world * LOCAL_BATCH_SIZE / base
        if m1 is None:
            m0 = m1 = target
        elif target != m1:
            in_use = at(t - 1)
            k = target / in_use
            if kind == "immediate" or (k < 1 and shrink == "immediate"):
                T = 0
            else:
                T = ramp_iters if ramp_iters is not None else round(ramp_per_k * max(k, 1 / k))
            m0, m1, t0 = in_use, target, t
        out.append(at(t))
    return out


def make_data(seed=0):
    rng = np.random.RandomState(seed)
    w_true = rng.randn(DIM)
    batches = []
    for world in WORLDS:
        x = rng.randn(world * LOCAL_BATCH_SIZE, DIM)
        y = x @ w_true + 0.1 * rng.randn(len(x))
        batches.append((x, y))
    return batches


def reference(batches, lrs, optimizer, corrected, w0):
    w = w0.astype(np.float64).copy()
    buf = np.zeros_like(w)  # u in u-form, v in v-form
    trajectory = []
    for (x, y), lr in zip(batches, lrs):
        grad = x.T @ (x @ w - y) / len(y) + WD * w
        if corrected:
            buf = MU * buf + grad
            w = w - lr * (grad + MU * buf) if optimizer == "nag" else w - lr * buf
        else:
            buf = MU * buf - lr * grad
            w = w + MU * buf - lr * grad if optimizer == "nag" else w + buf
        trajectory.append(w.copy())
    return trajectory


def trainer_trajectory(batches, optimizer, w0, **elastic):
    backend = backends.create("device", world_size=WORLDS[0])
    net = gluon.nn.Dense(1, in_units=DIM, use_bias=False)
    net.initialize()
    net.weight.set_data(mx.nd.array(w0.reshape(1, DIM)))
    trainer = ElasticTrainer(net.collect_params(), optimizer, {"momentum": MU, "wd": WD},
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE,
                             schedule=Schedule(**SCHEDULE), **elastic)
    trajectory, lrs = [], []
    for (x, y), world in zip(batches, WORLDS):
        backend.set_world_size(world)
        lrs.append(trainer.learning_rate)
        with autograd.record():
            # Sum of per-sample losses: the reduction's sum over the global batch.
            loss = 0.5 * ((net(mx.nd.array(x)).reshape(-1) - mx.nd.array(y)) ** 2).sum()
        loss.backward()
        trainer.step()
        trajectory.append(net.weight.data().asnumpy().ravel().astype(np.float64))
    return trajectory, lrs


CASES = {
    "immediate": (dict(transition="immediate"), dict(kind="immediate"), True),
    "immediate_no_correction": (dict(transition="immediate", momentum_correction=False),
                                dict(kind="immediate"), False),
    "dynamic_T8": (dict(transition="dynamic", ramp_iters=8), dict(kind="dynamic", ramp_iters=8),
                   True),
    "dynamic_T_per_k_ramp_shrink": (
        dict(transition="dynamic", ramp_per_k=4, shrink="ramp"),
        dict(kind="dynamic", ramp_per_k=4, shrink="ramp"), True),
}


@pytest.mark.parametrize("optimizer", ["sgd", "nag"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_matches_reference(case, optimizer):
    trainer_args, reference_args, corrected = CASES[case]
    batches = make_data()
    w0 = np.random.RandomState(1).randn(DIM).astype(np.float32)
    got, lrs = trainer_trajectory(batches, optimizer, w0, **trainer_args)
    progress = np.cumsum([0] + [len(y) for _, y in batches])[:-1]
    expected_lrs = [base_lr(p) * m for p, m in zip(progress, multipliers(WORLDS, **reference_args))]
    np.testing.assert_allclose(lrs, expected_lrs, rtol=1e-12)
    expected = reference(batches, expected_lrs, optimizer, corrected, w0)
    assert len(got) == 60
    for step, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg="step %d" % step)


def test_corrected_and_native_runs_differ():
    # The check above would pass vacuously if correction did nothing: make sure it matters here.
    batches = make_data()
    w0 = np.random.RandomState(1).randn(DIM).astype(np.float32)
    corrected, _ = trainer_trajectory(batches, "sgd", w0, transition="immediate")
    native, _ = trainer_trajectory(batches, "sgd", w0, transition="immediate",
                                   momentum_correction=False)
    assert np.abs(corrected[-1] - native[-1]).max() > 1e-3


def test_mid_ramp_change_in_reference_schedule():
    # 2 -> 8 at step 10 starts a 16-step ramp (ramp_per_k=4, k=4); 8 -> 3 arrives at step 25,
    # mid-ramp: the new transition starts from the multiplier in use at step 24.
    ms = multipliers(WORLDS, kind="dynamic", ramp_per_k=4, shrink="ramp")
    assert ms[24] == pytest.approx(1 + 14 / 16 * 3)
    assert ms[25] == pytest.approx(ms[24])
