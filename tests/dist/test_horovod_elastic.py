"""Elastic Horovod on this machine: workers join, leave and die in place.

Two ``horovodrun`` elastic jobs (tests/workers/horovod_elastic.py), each shared by several tests:

- ``resize``: 2 -> 3 -> 1 -> 2 -> 1 (kill -9 of rank 1) -> 2, five changes driven by a discovery
  script that follows the training iteration; the 3 -> 1 change removes two workers, which must
  leave with exit code 0 and no abort; rank 1 runs on the host name 127.0.0.1 so that its death
  blacklists only that name.
- ``kill_root``: hosts localhost:1 and 127.0.0.1:2; the worker holding rank 0 is SIGKILLed and
  the driver blacklists its host name; the two others go on. (A worker sharing the dead one's
  host name would be terminated by the driver with it: Horovod blacklists whole hosts.)

Rank 0 writes JSON lines; the assertions are equalities on them: identical parameters and momentum
on every rank after every reset, the LR of every committed step equal to the policy's (recomputed
here with gluon_elastic.policy and gluon_elastic.schedule), no progress lost past a commit, every
sample of every epoch trained exactly once in committed work, and exit code 0.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "horovod_elastic.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist"))
# pylint: disable=wrong-import-position
from horovod_records import (Job, assert_clean_exit, assert_exactly_once,  # noqa: E402
                             assert_identical_after_every_reset,
                             assert_progress_never_behind_last_commit)
from processes import run_elastic_horovodrun  # noqa: E402

pytestmark = pytest.mark.dist

RESIZE_SCHEDULE = "0:2;3:3;6:1;9:localhost:1,127.0.0.1:1;15:localhost:2,127.0.0.1:1"
RESIZE_EXITS = "13:1:kill"
KILL_ROOT_SCHEDULE = "0:localhost:1,127.0.0.1:2"
KILL_ROOT_EXITS = "4:0:kill"
EPOCHS = 3
JOB_TIMEOUT = 240


def run_job(log_dir, np_start, min_np, max_np, schedule, exits, wait):
    """Run one elastic horovodrun job to its end; every process it started is killed after."""
    argv = [sys.executable, WORKER, "--log-dir", log_dir, "--schedule", schedule, "--exits", exits,
            "--epochs", str(EPOCHS)] + (["--wait-for-schedule"] if wait else [])
    env_extra = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "60",
                 # The driver orders host names through a set: a fixed hash seed fixes the order
                 # (localhost first), so rank 0 is alone on its host name in the kill_root job.
                 "PYTHONHASHSEED": "0",
                 "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"}
    returncode, output = run_elastic_horovodrun(log_dir, argv, schedule, np_start, min_np, max_np,
                                                JOB_TIMEOUT, env_extra)
    with open(os.path.join(log_dir, "output.txt"), "w") as fout:
        fout.write(output)
    return Job(log_dir, returncode, output)


@pytest.fixture(scope="module")
def resize_job(tmp_path_factory):
    return run_job(str(tmp_path_factory.mktemp("resize")), 2, 1, 3, RESIZE_SCHEDULE, RESIZE_EXITS,
                   wait=True)


@pytest.fixture(scope="module")
def kill_root_job(tmp_path_factory):
    return run_job(str(tmp_path_factory.mktemp("kill_root")), 3, 1, 3, KILL_ROOT_SCHEDULE,
                   KILL_ROOT_EXITS, wait=False)


JOBS = ["resize_job", "kill_root_job"]


def expected_lrs(job, initial_world_size):
    """The LR of each committed step, from the policy and schedule alone."""
    from gluon_elastic.policy import BatchPolicy, Transition, lr_scale
    from horovod_elastic import LOCAL_BATCH_SIZE, schedule_for

    policy = BatchPolicy("fixed_local", local_batch_size=LOCAL_BATCH_SIZE)
    base_batch_size = 2 * LOCAL_BATCH_SIZE
    schedule = schedule_for(EPOCHS)
    transition = Transition("dynamic")
    transition.reset(lr_scale("linear", policy.global_batch_size(initial_world_size),
                              base_batch_size))
    world_size = initial_world_size
    lrs = []
    for step in job.committed_steps():
        if step["world_size"] != world_size:
            world_size = step["world_size"]
            transition.change(step["iteration"], lr_scale(
                "linear", policy.global_batch_size(world_size), base_batch_size))
        progress_before = step["progress"] - step["global_batch_size"]
        lrs.append(schedule(progress_before) * transition.multiplier(step["iteration"]))
    return lrs


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_job_exits_zero_without_aborts(job_name, request):
    assert_clean_exit(request.getfixturevalue(job_name))


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_all_ranks_identical_after_every_reset(job_name, request):
    job = request.getfixturevalue(job_name)
    assert len(job.events("start")) >= 2
    assert_identical_after_every_reset(job)


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_lr_follows_policy_through_every_change(job_name, request):
    job = request.getfixturevalue(job_name)
    steps = job.committed_steps()
    initial = job.events("start")[0]["world_size"]
    for step, lr in zip(steps, expected_lrs(job, initial)):
        assert step["lr"] == pytest.approx(lr, rel=1e-9), step
    assert [s["iteration"] for s in steps] == list(range(len(steps)))


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_progress_never_goes_back_past_a_commit(job_name, request):
    assert_progress_never_behind_last_commit(request.getfixturevalue(job_name), EPOCHS * 60)


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_every_sample_once_per_epoch_in_committed_work(job_name, request):
    assert_exactly_once(request.getfixturevalue(job_name), EPOCHS, 60)


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_resize_world_sequence_and_rollback(resize_job):
    worlds = [r["world_size"] for r in resize_job.events("start")]
    assert worlds == [2, 3, 1, 2, 1, 2], worlds
    starts = resize_job.events("start")
    # The kill at iteration 13 rolls back to the commit at iteration 12, which is redone.
    assert starts[4]["iteration"] == 12 and starts[4]["progress"] == 96
    # Each change lands where the schedule puts it.
    assert [s["iteration"] for s in starts[1:4]] == [3, 6, 9]
    assert starts[5]["iteration"] == 15
    # The two workers removed at 3 -> 1 left on their own.
    assert resize_job.output.count("is not part of the new world; leaving") == 2


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_kill_root_survivors_continue(kill_root_job):
    starts = kill_root_job.events("start")
    # The driver blacklists the host name of the dead worker and the two ranks on the other name
    # go on. Rank 0 is alone on its host name (PYTHONHASHSEED fixes the order), so no worker is
    # removed with it: one that shared the name would be terminated by the driver.
    assert starts[0]["hosts"] == ["localhost", "127.0.0.1", "127.0.0.1"]
    assert [s["world_size"] for s in starts] == [3, 2]
    assert starts[1]["hosts"] == ["127.0.0.1", "127.0.0.1"]
    assert kill_root_job.output.count("is not part of the new world; leaving") == 0
    # Rank 0 died before step 4; the survivors redo step 3 from the commit at iteration 3.
    assert starts[1]["iteration"] == 3
    assert starts[1]["progress"] == 36
    redone = [s for s in kill_root_job.events("step") if s["iteration"] == 3]
    assert [s["world_size"] for s in redone] == [3, 2]
