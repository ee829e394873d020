"""Three real workers at the tail of an epoch, where two of them have no samples.

The worker (``tests/workers/tail_batch.py``) trains on 13 samples with a per-worker batch of 4:
every epoch is a global batch of 12 (values 1..12, mean 6.5) and one of 1 (value 13) that only
rank 0 holds. Every rank must step every time and end with the weights of the closed form, with
``step()`` and with ``allreduce_grads()`` -> clip to global norm 1 -> ``update()``.
"""
import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "tail_batch.py")
EPOCHS, LR, MU, WD, MAX_NORM = 2, 0.1, 0.9, 0.01, 1.0
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable-next=wrong-import-position
from processes import json_lines, run_kvstore_group  # noqa: E402


def expected_weights(clip):
    """Weights after each step: SGD with momentum on the mean gradient of each global batch."""
    weight, velocity, out = np.ones(2), np.zeros(2), []
    for _ in range(EPOCHS):
        for values in (np.arange(1, 13), np.array([13])):
            grad = np.full(2, values.mean())
            if clip:  # mxnet.gluon.utils.clip_global_norm
                grad = grad * min(1.0, MAX_NORM / (np.linalg.norm(grad) + 1e-8))
            velocity = MU * velocity - LR * (grad + WD * weight)
            weight = weight + velocity
            out.append(weight)
    return out


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", ["step", "clip"])
def test_every_rank_steps_through_empty_batches(mode):
    code, text = run_kvstore_group([sys.executable, WORKER, "dist_sync", mode, str(EPOCHS)], 3)
    assert code == 0, text[-3000:]
    rows = json_lines(text, key="rank")
    expected = expected_weights(clip=mode == "clip")
    assert len(rows) == 3 * len(expected)
    for row in rows:
        assert row["world_size"] == 3
        # Per epoch: 4 samples on every rank, then 1 on rank 0 and none elsewhere.
        assert row["batch"] == (4 if row["step"] % 2 == 0 else int(row["rank"] == 0))
        np.testing.assert_allclose(row["weight"], expected[row["step"]], rtol=1e-6, atol=1e-6)
    # The clip is active in this set-up: the two modes must differ.
    assert np.abs(expected_weights(True)[-1] - expected_weights(False)[-1]).max() > 0.1
