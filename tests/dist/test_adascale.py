"""AdaScale against numpy with known per-worker gradients: emulated, KVStore and Horovod workers.

The worker (``tests/workers/adascale.py``) gives sample ``j`` of rank ``r`` the gradient
``D[t, r, j]``. The reference below recomputes, in float64, the estimates of Johnson et al. from
the per-worker sums ``G_r``, their moving averages, the gain and the u-form SGD trajectory.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "adascale.py")
STEPS = 6
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))

# pylint: disable-next=wrong-import-position
from processes import json_lines, run_horovodrun, run_kvstore_group  # noqa: E402
from adascale import DIM, LOCAL_BATCH_SIZE, LR, MOMENTUM, gradients  # noqa: E402


def reference(world_size):
    """(gains, weights) per step, from the per-worker gradient sums."""
    scale = float(world_size)
    batch = world_size * LOCAL_BATCH_SIZE
    theta = max(1.0 - scale / 1000.0, 0.0)
    weight, u = np.ones(DIM), np.zeros(DIM)
    variance = mean_sq = None
    gains, weights = [], []
    for step in range(STEPS):
        sums = gradients(step, world_size).sum(axis=1)             # G_r
        total = sums.sum(axis=0)                                     # G
        new_variance = ((sums ** 2).sum() / LOCAL_BATCH_SIZE - (total ** 2).sum() / batch) / (
            world_size - 1)
        new_mean_sq = (total ** 2).sum() / batch ** 2 - new_variance / batch
        if variance is None:
            variance, mean_sq = new_variance, new_mean_sq
        else:
            variance = theta * variance + (1 - theta) * new_variance
            mean_sq = theta * mean_sq + (1 - theta) * new_mean_sq
        sigma_sq = max(variance, 0.0) / LOCAL_BATCH_SIZE
        gain = (sigma_sq + max(mean_sq, 0.0)) / (sigma_sq / scale + max(mean_sq, 0.0))
        u = MOMENTUM * u + total / batch
        weight = weight - LR * gain * u
        gains.append(gain)
        weights.append(weight)
    return gains, weights


def check(rows, world_size, processes):
    gains, weights = reference(world_size)
    assert len(rows) == processes * STEPS
    assert {row["rank"] for row in rows} == set(range(processes))
    assert 1.0 < min(gains) and max(gains) < world_size   # the gain is informative here
    for row in rows:
        assert row["world_size"] == world_size
        assert row["gain"] == pytest.approx(gains[row["step"]], rel=1e-6)
        np.testing.assert_allclose(row["weight"], weights[row["step"]], rtol=1e-6, atol=1e-6)
        # Scale-invariant progress: gain * base batch per step.
        assert row["schedule_progress"] == pytest.approx(
            LOCAL_BATCH_SIZE * sum(gains[:row["step"] + 1]), rel=1e-6)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size, devices", [(2, 1), (3, 1), (2, 2)])
def test_emulated_workers_match_the_closed_form(world_size, devices):
    """2 devices: each virtual worker's G_i is the sum of what its devices add."""
    done = subprocess.run([sys.executable, WORKER, "emulate:%d@%d" % (world_size, devices),
                           str(STEPS)],
                          capture_output=True, text=True, timeout=100, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    check(json_lines(done.stdout, key="rank"), world_size, processes=1)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("world_size, devices", [(2, 1), (3, 1), (2, 2)])
def test_kvstore_workers_match_the_closed_form(world_size, devices):
    """2 devices per worker: as for Horovod below, the closed form of one device per worker."""
    code, text = run_kvstore_group(
        [sys.executable, WORKER, "dist_sync@%d" % devices, str(STEPS)], world_size)
    assert code == 0, text[-3000:]
    check(json_lines(text, key="rank"), world_size, processes=world_size)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("world_size, devices", [(2, 1), (3, 1), (2, 2)])
def test_horovod_workers_match_the_closed_form(tmp_path, world_size, devices):
    """With 2 devices per worker each device trains one of the worker's 2 samples: the gains
    and weights are those of one device (the worker's gradient is the sum over its devices)."""
    pytest.importorskip("horovod.mxnet")
    argv = [sys.executable, WORKER, "horovod@%d" % devices, str(STEPS), str(tmp_path)]
    code, text = run_horovodrun(world_size, argv, 150, str(tmp_path))
    assert code == 0, text[-3000:]
    check(json_lines(text, key="rank"), world_size, processes=world_size)
