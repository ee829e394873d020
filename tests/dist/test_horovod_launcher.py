"""Faults under the project's Horovod launcher (``python -m gluon_elastic.horovodrun``).

Every job runs tests/workers/horovod_elastic.py on one-slot "hosts" that are names of this
machine (``processes.loopback_hosts()``), with ``HOROVOD_GLOO_TIMEOUT_SECONDS=60``, an overall
timeout, and every process it started killed at its end:

- ``replacement``: one discovery answer removes a host and adds another; the world returns to 2
  on the listed hosts (the removed worker leaves with exit code 0, the joiner is not lost);
- ``stop``: a worker SIGSTOPped for 10 s and continued is waited for: no reset;
- ``no_survivor``: both hosts of the world leave the list while two others are added; the driver
  ends that generation and the supervisor relaunches from the durable commit on the new hosts;
- ``all_dead``: the only worker is SIGKILLed; the supervisor relaunches from the durable commit;
- ``driver_killed``: SIGKILL of the driver; the supervisor relaunches from the durable commit;
- ``chaos``: a fixed-seed sequence of 13 events on 4 hosts: flaps between 1 and 4 workers, SIGKILL
  of random ranks (rank 0 among them) in worlds of 4, one replacement. Each kill must be
  recovered from long before the Gloo timeout that a survivor would otherwise have waited.

Assertions are equalities on the worker's records: exit code 0, identical parameters and momentum
on every rank after every reset, every sample of every epoch exactly once in committed work, no
restart behind the last commit.
"""
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "horovod_elastic.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist"))
# pylint: disable=wrong-import-position
from horovod_records import Job, assert_every_invariant  # noqa: E402
from horovod_elastic import STOP_SECONDS, chaos_plan, listed  # noqa: E402
from processes import loopback_hosts, run_elastic_horovodrun  # noqa: E402

pytestmark = pytest.mark.dist

GLOO_TIMEOUT = 60
NUM_SAMPLES = 60   # tests/workers/horovod_elastic.py
EPOCHS = 3
CHAOS_EPOCHS = 12
CHAOS_SEED = 20261129
JOB_TIMEOUT = 240
LEAVING = "is not part of the new world; leaving"
HOSTS = loopback_hosts()
needs_hosts = pytest.mark.skipif(len(HOSTS) < 4, reason="needs 4 names of this machine, found %s"
                                 % HOSTS)


def run_job(log_dir, np_start, schedule, exits, epochs=EPOCHS, max_restarts=3):
    """Run one job under the launcher with schedule-driven discovery; returns a Job."""
    argv = [sys.executable, WORKER, "--log-dir", log_dir, "--schedule", schedule, "--exits", exits,
            "--epochs", str(epochs), "--wait-for-schedule"]
    env_extra = {"HOROVOD_GLOO_TIMEOUT_SECONDS": str(GLOO_TIMEOUT),
                 "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"}
    launcher_args = ["--checkpoint-dir", os.path.join(log_dir, "checkpoints"),
                     "--max-restarts", str(max_restarts), "--blacklist-cooldown-range", "1,2"]
    tic = time.monotonic()
    leftovers = []
    returncode, output = run_elastic_horovodrun(log_dir, argv, schedule, np_start, 1, 4,
                                                JOB_TIMEOUT, env_extra, launcher_args, leftovers)
    wall = time.monotonic() - tic
    with open(os.path.join(log_dir, "output.txt"), "w") as fout:
        fout.write(output)
    job = Job(log_dir, returncode, output, wall)
    job.leftovers = leftovers
    return job


def launcher_lines(job):
    return [line for line in job.output.splitlines()
            if line.startswith("[gluon_elastic.horovodrun]")]


@pytest.fixture(scope="module")
def replacement_job(tmp_path_factory):
    a, b, c = HOSTS[:3]
    return run_job(str(tmp_path_factory.mktemp("replacement")), 2,
                   "0:%s;6:%s" % (listed(a, b), listed(a, c)), "")


@pytest.fixture(scope="module")
def stop_job(tmp_path_factory):
    return run_job(str(tmp_path_factory.mktemp("stop")), 3, "0:%s" % listed(*HOSTS[:3]),
                   "6:1:stop")


@pytest.fixture(scope="module")
def no_survivor_job(tmp_path_factory):
    a, b, c, d = HOSTS[:4]
    return run_job(str(tmp_path_factory.mktemp("no_survivor")), 2,
                   "0:%s;6:%s" % (listed(a, b), listed(c, d)), "")


@pytest.fixture(scope="module")
def all_dead_job(tmp_path_factory):
    return run_job(str(tmp_path_factory.mktemp("all_dead")), 1, "0:%s" % listed(HOSTS[0]),
                   "5:0:kill")


@pytest.fixture(scope="module")
def driver_killed_job(tmp_path_factory):
    return run_job(str(tmp_path_factory.mktemp("driver_killed")), 2,
                   "0:%s" % listed(*HOSTS[:2]), "10:1:kill-driver")


@pytest.fixture(scope="module")
def chaos_job(tmp_path_factory):
    schedule, exits = chaos_plan(HOSTS, CHAOS_SEED)
    return run_job(str(tmp_path_factory.mktemp("chaos")), 4, schedule, exits,
                   epochs=CHAOS_EPOCHS)


JOBS = ["replacement_job", "stop_job", "no_survivor_job", "all_dead_job", "driver_killed_job"]


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_job_keeps_every_invariant(job_name, request):
    job = request.getfixturevalue(job_name)
    assert_every_invariant(job, EPOCHS, NUM_SAMPLES)


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_replacement_ends_at_the_listed_world(replacement_job):
    a, _, c = HOSTS[:3]
    starts = replacement_job.events("start")
    assert [s["world_size"] for s in starts] == [2, 2]
    assert starts[1]["iteration"] == 6
    assert sorted(starts[1]["hosts"]) == sorted([a, c])
    assert sorted(replacement_job.events("end")[0]["hosts"]) == sorted([a, c])
    assert replacement_job.output.count(LEAVING) == 1
    assert launcher_lines(replacement_job) == []


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_stopped_worker_is_waited_for(stop_job):
    assert [s["world_size"] for s in stop_job.events("start")] == [3]
    assert "collective failed" not in stop_job.output
    steps = stop_job.events("step")
    gaps = [(b["iteration"], b["time"] - a["time"]) for a, b in zip(steps, steps[1:])]
    longest = max(gaps, key=lambda gap: gap[1])
    assert longest[0] == 6 and longest[1] >= STOP_SECONDS - 1.0, gaps
    assert [s["world_size"] for s in steps] == [3] * len(steps)


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_no_survivor_resumes_on_the_new_hosts(no_survivor_job):
    _, _, c, d = HOSTS[:4]
    starts = no_survivor_job.events("start")
    assert [(s["world_size"], s["iteration"], s["generation"]) for s in starts] == \
        [(2, 0, 0), (2, 6, 1)]
    assert sorted(starts[1]["hosts"]) == sorted([c, d])
    lines = launcher_lines(no_survivor_job)
    assert len(lines) == 3, lines
    assert "no worker of the previous world survives" in lines[0]
    assert lines[1].startswith("[gluon_elastic.horovodrun] no worker of the previous world "
                               "survives; relaunching on the listed hosts from ")
    assert lines[1].endswith("state-000000000006.ckpt (restart 1, 1 of 3 allowed per 3600 s)")
    assert lines[2] == "[gluon_elastic.horovodrun] job finished after 1 relaunch(es)"


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_all_workers_dead_resumes_from_the_durable_commit(all_dead_job):
    starts = all_dead_job.events("start")
    # Commits every 3 steps: the worker dies at iteration 5, after the commit at 3.
    assert [(s["world_size"], s["iteration"], s["generation"]) for s in starts] == \
        [(1, 0, 0), (1, 3, 1)]
    lines = launcher_lines(all_dead_job)
    assert lines[-2].startswith("[gluon_elastic.horovodrun] the driver exited with code 1 "
                                "(workers failed); relaunching on the listed hosts from ")
    assert lines[-2].endswith("state-000000000003.ckpt (restart 1, 1 of 3 allowed per 3600 s)")
    assert lines[-1] == "[gluon_elastic.horovodrun] job finished after 1 relaunch(es)"


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_driver_killed_resumes_from_the_durable_commit(driver_killed_job):
    starts = driver_killed_job.events("start")
    # Commits every 3 steps: the driver dies at iteration 10, after the commit at 9.
    assert [(s["world_size"], s["iteration"], s["generation"]) for s in starts] == \
        [(2, 0, 0), (2, 9, 1)]
    lines = launcher_lines(driver_killed_job)
    assert len(lines) == 2, lines
    assert lines[0].startswith("[gluon_elastic.horovodrun] the driver was killed by signal 9; "
                               "relaunching on the listed hosts from ")
    assert lines[0].endswith("state-000000000009.ckpt (restart 1, 1 of 3 allowed per 3600 s)")


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_chaos_keeps_every_invariant(chaos_job):
    assert_every_invariant(chaos_job, CHAOS_EPOCHS, NUM_SAMPLES)


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_chaos_went_through_every_event(chaos_job):
    kills = chaos_job.events("kill")
    assert [(k["iteration"], k["world_size"]) for k in kills] == \
        [(12, 4), (24, 4), (33, 4), (42, 4)]
    assert 0 in [k["rank"] for k in kills]
    starts = chaos_job.events("start")
    worlds = [s["world_size"] for s in starts]
    assert min(worlds) == 1 and max(worlds) == 4
    # The replacement at iteration 18 (b -> c) ends on the two listed hosts, unless c is still in
    # its blacklist cool-down (at most 2 s) from a kill shortly before: then on a alone (c comes
    # back at the next change).
    a, _, c, _ = HOSTS[:4]
    replaced = [s for s in starts if s["iteration"] == 18]
    killed_c = [k for k in kills if replaced and 0 < replaced[0]["time"] - k["time"] < 3.0
                and [s for s in starts if s["time"] < k["time"]][-1]["hosts"][k["rank"]] == c]
    assert [sorted(s["hosts"]) for s in replaced] in \
        ([[sorted([a, c])]] + ([[[a]]] if killed_c else [])), (replaced, kills)
    # Changes that land between two checks merge into one reset (a kill and a removal, say):
    # of the 13 planned events, at least 10 resets.
    assert len(starts) - 1 >= 10, worlds


@needs_hosts
@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_chaos_recovers_from_each_kill_long_before_the_gloo_timeout(chaos_job):
    steps = chaos_job.events("step")
    stalls = []
    for kill in chaos_job.events("kill"):
        after = [s["time"] for s in steps if s["time"] > kill["time"]]
        stalls.append(after[0] - kill["time"])
    # A survivor left waiting in a receive would stall the job for the whole Gloo timeout.
    assert max(stalls) < GLOO_TIMEOUT / 4, stalls
    assert chaos_job.wall_seconds < len(stalls) * GLOO_TIMEOUT, chaos_job.wall_seconds
