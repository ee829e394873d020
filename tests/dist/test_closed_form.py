"""Closed-form checks across real processes: KVStore groups and Horovod.

Each rank's per-sample gradient is ``rank + 1``; with SGD (lr 0.1, momentum 0.9) and a fixed per-worker
batch, the applied gradient is the mean over the global batch, ``(N + 1) / 2`` for N workers, so
after step t every rank must hold ``1 - 0.1 * (N + 1) / 2 * (1 + 0.9 + ... + 0.9**t)`` summed over
steps. Repeated runs catch the initialisation race of lazily initialised KVStores.
"""
import io
import os
import sys
import uuid

import numpy as np
import pytest

from gluon_elastic.launch import Group

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "closed_form.py")
STEPS, LOCAL_BATCH_SIZE, LR, MOMENTUM = 3, 2, 0.1, 0.9
# Every process of a KVStore group inherits this variable, the scheduler and servers too.
TOKEN_VAR = "GLUON_ELASTIC_CLOSED_FORM_TEST_TOKEN"
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable-next=wrong-import-position
from processes import json_lines, kill_processes_with_token, run_horovodrun  # noqa: E402


def expected_weights(world_size):
    mean_grad = (world_size + 1) / 2
    weight, velocity, out = 1.0, 0.0, []
    for _ in range(STEPS):
        velocity = MOMENTUM * velocity - LR * mean_grad
        weight += velocity
        out.append(weight)
    return out


def records(text):
    """The workers' JSON lines: only those with a rank (the launchers print other braces)."""
    return json_lines(text, key="rank")


def check(rows, world_size):
    assert sorted({r["rank"] for r in rows}) == list(range(world_size))
    assert len(rows) == world_size * STEPS
    expected = expected_weights(world_size)
    for row in rows:
        assert row["world_size"] == world_size
        np.testing.assert_allclose(row["weight"], [expected[row["step"]]] * 4, rtol=1e-6,
                                   atol=1e-6)
    # Rank 0's conv initialisation reached every rank.
    assert len({r["conv_initial"] for r in rows}) == 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world_size, num_servers, repeats", [(2, 1, 3), (3, 2, 2), (2, 2, 1),
                                                              (3, 1, 1)])
def test_kvstore_group_applies_the_mean(world_size, num_servers, repeats):
    command = [sys.executable, WORKER, "dist_sync", str(STEPS), str(LOCAL_BATCH_SIZE), str(LR),
               str(MOMENTUM)]
    for _ in range(repeats):
        output, token = io.StringIO(), uuid.uuid4().hex
        group = Group(command, world_size, num_servers, output=output, env={TOKEN_VAR: token})
        try:
            code = group.start().wait(timeout=90)
        finally:
            leftovers = kill_processes_with_token(TOKEN_VAR, token)
        assert leftovers == []
        assert all(proc.poll() is not None for proc in group.procs.values())
        assert code == 0, output.getvalue()[-3000:]
        check(records(output.getvalue()), world_size)


@pytest.mark.timeout(180)
def test_horovod_applies_the_same_mean(tmp_path):
    pytest.importorskip("horovod.mxnet")
    # The worker reads five arguments; the sixth only marks this job's processes.
    argv = [sys.executable, WORKER, "horovod", str(STEPS), str(LOCAL_BATCH_SIZE), str(LR),
            str(MOMENTUM), str(tmp_path)]
    code, text = run_horovodrun(2, argv, 150, str(tmp_path))
    assert code == 0, text[-3000:]
    check(records(text), 2)
