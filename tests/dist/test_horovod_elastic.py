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
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "horovod_elastic.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable-next=wrong-import-position
from processes import run_elastic_horovodrun  # noqa: E402

pytestmark = pytest.mark.dist

RESIZE_SCHEDULE = "0:2;3:3;6:1;9:localhost:1,127.0.0.1:1;15:localhost:2,127.0.0.1:1"
RESIZE_EXITS = "13:1:kill"
KILL_ROOT_SCHEDULE = "0:localhost:1,127.0.0.1:2"
KILL_ROOT_EXITS = "4:0:kill"
EPOCHS = 3
JOB_TIMEOUT = 240


class Job:
    """One finished horovodrun job: exit code, output, rank 0's records, every rank's indices."""

    def __init__(self, log_dir, returncode, output):
        self.returncode = returncode
        self.output = output
        with open(os.path.join(log_dir, "rank0.jsonl")) as fin:
            self.records = [json.loads(line) for line in fin]
        self.indices = []
        for name in sorted(os.listdir(log_dir)):
            if name.startswith("indices."):
                with open(os.path.join(log_dir, name)) as fin:
                    self.indices.extend(json.loads(line) for line in fin)

    def events(self, kind):
        return [r for r in self.records if r["event"] == kind]

    def committed_steps(self):
        """Rank 0's step records of the work that stands: the latest run of each iteration."""
        latest = {}
        for record in self.events("step"):
            latest[record["iteration"]] = record
        return [latest[i] for i in sorted(latest)]


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
    job = request.getfixturevalue(job_name)
    assert job.returncode == 0, job.output[-4000:]
    worker_lines = "\n".join(line for line in job.output.splitlines() if line.startswith("["))
    for text in ("has been removed from elastic job", "terminate called", "Aborted",
                 "Segmentation fault", "Traceback", "Terminated"):
        assert text not in worker_lines, job.output[-4000:]
    assert len(job.events("end")) == 1


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_all_ranks_identical_after_every_reset(job_name, request):
    job = request.getfixturevalue(job_name)
    starts = job.events("start")
    assert len(starts) >= 2
    for record in starts + job.events("end"):
        assert len(record["param_digests"]) == record["world_size"]
        assert len(set(record["param_digests"])) == 1, record
        assert len(set(record["momentum_digests"])) == 1, record


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
    job = request.getfixturevalue(job_name)
    last_commit = 0
    for record in job.records:
        if record["event"] == "commit":
            assert record["progress"] >= last_commit
            last_commit = record["progress"]
        elif record["event"] == "start":
            assert record["progress"] >= last_commit, record
    assert job.events("end")[0]["progress"] == EPOCHS * 60


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize("job_name", JOBS)
def test_every_sample_once_per_epoch_in_committed_work(job_name, request):
    job = request.getfixturevalue(job_name)
    latest_generation = {}
    for record in job.indices:
        key = record["iteration"]
        latest_generation[key] = max(latest_generation.get(key, -1), record["generation"])
    per_epoch = {}
    for record in job.indices:
        if record["generation"] == latest_generation[record["iteration"]]:
            per_epoch.setdefault(record["epoch"], []).extend(record["indices"])
    assert sorted(per_epoch) == list(range(EPOCHS))
    for epoch, indices in per_epoch.items():
        assert sorted(indices) == list(range(60)), epoch
    # Committed global batches match the ranks' shares, step by step.
    for step in job.committed_steps():
        shares = [r for r in job.indices if r["iteration"] == step["iteration"]
                  and r["generation"] == latest_generation[step["iteration"]]]
        assert sum(len(r["indices"]) for r in shares) == step["global_batch_size"]
        assert len(shares) == step["world_size"]


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
