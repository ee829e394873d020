"""Commits that do not stall the step, checked by rolling back to them after SIGKILLs.

One job under the project's launcher (tests/workers/horovod_elastic.py on 4 one-slot names of this
machine, ``HOROVOD_GLOO_TIMEOUT_SECONDS=60``, no blacklist cool-down so the world only shrinks):
steps are not followed by an engine flush (``--no-wait``), so a commit's copies run beside the
next step, and the state's commit policy adds commits of its own (``--auto-commit 5``: the
default overhead and time caps, and at least every 5 steps).
Rank 0 of the world of 4 is SIGKILLed at a point drawn from a seed (0-0.5 s after iteration 4:
inside a step, a check or a commit), then a rank drawn from the seed in the world of 3.

Every survivor's reset (shut Horovod down, re-initialise it on the new world) is timed in its
log line: a survivor left waiting in a Gloo operation would hold it for the Gloo timeout.

Every rank records the digests of all its parameters and momentum at each commit. After each
rollback, every rank holds exactly what the new rank 0 committed last, at that commit's iteration
(digests equal), besides the invariants of every elastic job.
"""
import json
import os
import random
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "horovod_elastic.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist"))
# pylint: disable=wrong-import-position
from horovod_records import Job, assert_every_invariant  # noqa: E402
from horovod_elastic import listed  # noqa: E402
from processes import loopback_hosts, run_elastic_horovodrun  # noqa: E402

pytestmark = pytest.mark.dist

NUM_SAMPLES = 60   # tests/workers/horovod_elastic.py
EPOCHS = 6
KILL_SEED = 20261129
JOB_TIMEOUT = 180
GLOO_TIMEOUT = 60
HOSTS = loopback_hosts()
needs_hosts = pytest.mark.skipif(len(HOSTS) < 4, reason="needs 4 names of this machine, found %s"
                                 % HOSTS)


def commits_of(log_dir):
    """``{pid: [commit records in time order]}`` of every rank."""
    found = {}
    for name in os.listdir(log_dir):
        if name.startswith("commits."):
            with open(os.path.join(log_dir, name)) as fin:
                found[int(name.split(".")[1])] = [json.loads(line) for line in fin]
    return found


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("commit"))
    second_rank = random.Random(KILL_SEED).randrange(3)
    exits = "4:0:kill-soon:4;12:%d:kill-soon:3" % second_rank
    schedule = "0:%s" % listed(*HOSTS[:4])
    argv = [sys.executable, WORKER, "--log-dir", log_dir, "--schedule", schedule, "--exits", exits,
            "--epochs", str(EPOCHS), "--commit-interval", "1000", "--no-wait", "--auto-commit", "5",
            "--kill-seed", str(KILL_SEED)]
    leftovers = []
    returncode, output = run_elastic_horovodrun(
        log_dir, argv, schedule, 4, 1, 4, JOB_TIMEOUT,
        {"HOROVOD_GLOO_TIMEOUT_SECONDS": str(GLOO_TIMEOUT),
         "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"},
        ["--checkpoint-dir", os.path.join(log_dir, "checkpoints"), "--max-restarts", "0"],
        leftovers)
    with open(os.path.join(log_dir, "output.txt"), "w") as fout:
        fout.write(output)
    result = Job(log_dir, returncode, output)
    result.leftovers = leftovers
    result.commits = commits_of(log_dir)
    return result


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_job_keeps_every_invariant(job):
    assert_every_invariant(job, EPOCHS, NUM_SAMPLES)


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_both_kills_landed_rank_0_first(job):
    kills = job.events("kill-soon")
    assert [(k["iteration"], k["rank"], k["world_size"]) for k in kills] == \
        [(4, 0, 4), (12, random.Random(KILL_SEED).randrange(3), 3)]
    assert [s["world_size"] for s in job.events("start")] == [4, 3, 2]


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_the_policy_commits_between_the_loops_commits(job):
    # The loop commits only at epoch ends (interval 1000); the policy adds commits in between.
    iterations = {c["iteration"] for commits in job.commits.values() for c in commits}
    epoch_ends = {c["iteration"] for c in job.events("commit")}
    assert iterations - epoch_ends, (iterations, epoch_ends)


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_rollback_restores_exactly_the_last_commit(job):
    rollbacks = [s for s in job.events("start") if any(s["restored"])]
    assert len(rollbacks) == 2, job.events("start")
    for start in rollbacks:
        # Every survivor rolled back; the sync then gave everyone rank 0's commit.
        assert all(start["restored"]), start
        mine = [c for c in job.commits[start["pids"][0]] if c["time"] < start["time"]]
        last = mine[-1]
        assert start["iteration"] == last["iteration"]
        assert set(start["param_digests"]) == {last["param_digest"]}
        assert set(start["momentum_digests"]) == {last["momentum_digest"]}


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_every_reset_after_a_kill_is_quick(job):
    seconds = [float(m) for m in re.findall(
        r"reset: rank \d+ of \d+ -> rank \d+ of \d+ in ([0-9.]+) s", job.worker_lines())]
    # Three survivors of the first kill, two of the second.
    assert len(seconds) == 5, job.worker_lines()[-4000:]
    # A survivor left waiting in a Gloo operation holds every reset for the whole Gloo timeout.
    assert max(seconds) < GLOO_TIMEOUT / 4, seconds
