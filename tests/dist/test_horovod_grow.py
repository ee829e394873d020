"""Growth without a pause for the joiner's start-up, under the project's launcher.

One job (tests/workers/horovod_elastic.py, steps lengthened to about 0.07 s): 2 workers on
localhost, discovery adds a third slot at iteration 3. The joiner sleeps 5 s in its start-up,
before it creates its Horovod backend. The driver starts it as soon as discovery lists the slot
and tells the survivors only when it reports its start-up done, so the survivors keep stepping
through the sleep; then the world grows to 3 and every rank holds the same state, which only
the joiner received in full.
"""
import json
import os
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
from processes import run_elastic_horovodrun  # noqa: E402

pytestmark = pytest.mark.dist

NUM_SAMPLES = 60   # tests/workers/horovod_elastic.py
EPOCHS = 20
STARTUP_SLEEP = 5.0
GROWTH_AT = 3
JOB_TIMEOUT = 180


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("grow"))
    schedule = "0:2;%d:3" % GROWTH_AT
    argv = [sys.executable, WORKER, "--log-dir", log_dir, "--schedule", schedule,
            "--epochs", str(EPOCHS), "--step-sleep", "0.05",
            "--startup-sleep", "2:%s" % STARTUP_SLEEP]
    leftovers = []
    returncode, output = run_elastic_horovodrun(
        log_dir, argv, schedule, 2, 1, 3, JOB_TIMEOUT,
        {"HOROVOD_GLOO_TIMEOUT_SECONDS": "60", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"},
        ["--checkpoint-dir", os.path.join(log_dir, "checkpoints")], leftovers)
    with open(os.path.join(log_dir, "output.txt"), "w") as fout:
        fout.write(output)
    result = Job(log_dir, returncode, output)
    result.leftovers = leftovers
    startups = [name for name in os.listdir(log_dir) if name.startswith("startup.")]
    result.startups = []
    for name in startups:
        with open(os.path.join(log_dir, name)) as fin:
            result.startups.append(json.load(fin))
    return result


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_job_keeps_every_invariant(job):
    assert_every_invariant(job, EPOCHS, NUM_SAMPLES)


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_survivors_step_through_the_joiners_start_up(job):
    starts = job.events("start")
    assert [s["world_size"] for s in starts] == [2, 3]
    assert len(job.startups) == 1  # one joiner, started once
    startup = job.startups[0]
    grown = starts[1]
    # The survivors were told only after the joiner's start-up (its 5 s sleep) was done.
    assert grown["time"] > startup["startup_done"]
    during = [s for s in job.events("step") if startup["sleep_start"] <= s["time"]
              <= startup["startup_done"]]
    assert all(s["world_size"] == 2 for s in during)
    # They kept stepping all along: about 0.07 s a step, no gap of a second.
    times = [startup["sleep_start"]] + [s["time"] for s in during] + [startup["startup_done"]]
    assert len(during) >= STARTUP_SLEEP / 0.2, len(during)
    assert max(b - a for a, b in zip(times, times[1:])) < 1.0
    # Progress went on past the scheduled growth point while the joiner started.
    assert grown["iteration"] > GROWTH_AT + len(during) // 2


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_only_ranks_without_the_state_receive_it(job):
    # Rank 0's log of each full-state transfer: at the launch rank 1 (a fresh process), at the
    # growth the joiner alone; the survivor holds the state already.
    sent = re.findall(r"\[0\]<stderr>:.*sync: rank 0's full state \(.* MB\) to ranks (\[.*\]) in",
                      job.output)
    assert sent == ["[1]", "[2]"]
