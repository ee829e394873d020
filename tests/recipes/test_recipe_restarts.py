"""The classification recipe under both launchers: resizes 2 -> 3 -> 1 and a worker killed in
between, with one checkpoint system on disk and every committed sample of every epoch trained once.

KVStore: the restart supervisor relaunches the group for every change. Horovod: the project's
launcher changes the world in place (three one-slot names of this machine) and makes commits
durable in its checkpoint directory.

The supervisor follows a discovery schedule over rank 0's ``--progress-file``: 2 workers, 3 once 16
samples are trained, 1 once 64 are (48 images, 2 epochs, per-worker batch 2). A thread SIGKILLs one
worker once 28 samples are trained (world 3). The metrics file (rank 0's step records and the
``restart`` events of relaunched groups) gives the committed steps: a restart at iteration k drops
the steps recorded after k.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import recipe_data

pytest.importorskip("gluoncv")
from gluon_elastic import recipe  # noqa: E402
from gluon_elastic.metrics import read_records  # noqa: E402

ROOT = recipe_data.ROOT
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# pylint: disable-next=wrong-import-position
from discovery import read_progress  # noqa: E402
from processes import (kill_processes_with_token, loopback_hosts,  # noqa: E402
                       processes_with_token, run_elastic_horovodrun)

# The classification tests' tiny configuration, and their RecordIO flags.
from test_recipe_classification import TINY, rec_flags  # noqa: E402

TOKEN_VAR = "GLUON_ELASTIC_RECIPE_RESTART_TEST_TOKEN"
NUM_TRAIN, LOCAL_BATCH, EPOCHS = 48, 2, 2


def _kill_one_worker_at(progress_file, threshold, token, done, killed, marker=b"DMLC_ROLE=worker"):
    """SIGKILL one worker process of the job (its environment holds ``marker``) once rank 0 has
    trained ``threshold`` samples."""
    while not done.is_set():
        if read_progress(progress_file) >= threshold:
            workers = []
            for pid in processes_with_token(TOKEN_VAR, token):
                try:
                    with open("/proc/%d/environ" % pid, "rb") as fin:
                        if marker in fin.read().split(b"\0"):
                            workers.append(pid)
                except OSError:
                    continue
            if workers:
                victim = random.Random(7).choice(sorted(workers))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
        time.sleep(0.1)


def committed_steps(records):
    """Step records of committed work: a restart or rollback to iteration k drops those recorded
    after k."""
    steps = []
    for record in records:
        if record["kind"] == "step":
            steps.append(record)
        elif record["kind"] == "event" and record["event"] in ("restart", "rollback"):
            steps = [s for s in steps if s["iteration"] <= record["iteration"]]
    return steps


def check_committed_work(ckpt, metrics_file, final_world, num_train=NUM_TRAIN, worlds=((2, 3),)):
    """One checkpoint system on disk; the committed batches cover every epoch once; ``worlds``
    are changes the metrics must show."""
    assert all(name.startswith("state-") for name in os.listdir(ckpt)), os.listdir(ckpt)
    final = recipe.latest_checkpoint(ckpt)
    assert (final["epoch"], final["world_size"]) == (EPOCHS, final_world)
    records = read_records(metrics_file)
    changes = [(r["world_size_from"], r["world_size"]) for r in records
               if r["kind"] == "event" and r["event"] == "world_change"]
    assert all(change in changes for change in worlds), changes
    assert not changes or changes[-1][1] == final_world, changes
    steps = committed_steps(records)
    assert [s["iteration"] for s in steps] == list(range(1, final["iteration"] + 1))
    # Every epoch: each committed step takes the next global batch of the epoch's order, so the
    # committed batches cover the epoch once, up to a tail shorter than the last global batch.
    total = 0
    for epoch in range(EPOCHS):
        batches = [s["global_batch_size"] for s in steps if s["epoch"] == epoch]
        assert batches and 0 <= num_train - sum(batches) < batches[-1], (epoch, batches)
        total += sum(batches)
    assert final["progress"] == total
    return records


def supervise_with_a_kill(tmp_path, recipe_argv, schedule, kill_at):
    """Run a recipe under the supervisor with schedule-driven discovery; SIGKILL one worker once
    rank 0 has trained ``kill_at`` samples. Returns the supervisor's output (exit 0 asserted)."""
    progress_file, discover = str(tmp_path / "progress"), str(tmp_path / "discover.sh")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "discovery.py"), "write",
                    "--schedule", schedule, "--progress-file", progress_file, "--out", discover],
                   check=True, capture_output=True)
    command = [sys.executable, "-m", "gluon_elastic.supervisor", "--host-discovery-script",
               discover, "--checkpoint-dir", str(tmp_path / "ckpt"), "--discovery-interval",
               "0.5", "--progress-timeout", "90", "--start-timeout", "240", "--max-restarts", "2",
               "--", sys.executable] + list(recipe_argv) + [
               "--backend", "dist_sync", "--commit-interval", "2", "--progress-file",
               progress_file, "--metrics-file", str(tmp_path / "run.jsonl")]
    token = uuid.uuid4().hex
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **{TOKEN_VAR: token})
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker_at,
                              args=(progress_file, kill_at, token, done, killed), daemon=True)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killer.start()
    try:
        output, _ = proc.communicate(timeout=540)
    finally:
        done.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = kill_processes_with_token(TOKEN_VAR, token)
    assert leftovers == []
    assert proc.returncode == 0, output[-5000:]
    assert killed, "no worker was killed: " + output[-3000:]
    assert "killed the group, restart 1" in output, output[-3000:]
    return output


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_supervisor_resizes_2_3_1_with_a_kill_between(tmp_path):
    rec_dir = recipe_data.make_imagenet_rec(str(tmp_path / "data"), num_train=NUM_TRAIN,
                                            num_val=4, classes=4, size=40)
    argv = [os.path.join(ROOT, "scripts", "classification", "train_imagenet.py")]
    argv += TINY + rec_flags(rec_dir) + ["--local-batch-size", str(LOCAL_BATCH),
                                         "--epochs", str(EPOCHS)]
    output = supervise_with_a_kill(tmp_path, argv, "0:2;16:3;64:1", kill_at=28)
    assert output.count("membership changed to") == 2, output[-3000:]
    check_committed_work(str(tmp_path / "ckpt"), str(tmp_path / "run.jsonl"), final_world=1)


@pytest.mark.dist
@pytest.mark.timeout(600)
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_supervisor_restarts_a_killed_recipe(task, tmp_path):
    """SSD and FCN: 2 workers, one killed, the group relaunched from the last checkpoint."""
    from test_recipe_detection import TINY as DETECTION
    from test_recipe_segmentation import TINY as SEGMENTATION

    if task == "detection":
        data = recipe_data.make_voc_detection(str(tmp_path / "data"), num_train=NUM_TRAIN // 2,
                                              num_val=2, size=64)
        argv = [os.path.join(ROOT, "scripts", "detection", "train_detection.py")] + DETECTION + [
            "--data-dir", data, "--train-splits", "2007_trainval", "--model",
            "ssd_300_mobilenet0.25_voc"]
    else:
        data = recipe_data.make_voc_segmentation(str(tmp_path / "data"), num_train=NUM_TRAIN // 2,
                                                 num_val=2, size=40)
        argv = [os.path.join(ROOT, "scripts", "segmentation", "train_segmentation.py")] + \
            SEGMENTATION + ["--data-dir", data]
    argv += ["--local-batch-size", str(LOCAL_BATCH), "--epochs", str(EPOCHS)]
    supervise_with_a_kill(tmp_path, argv, "0:2", kill_at=8)
    check_committed_work(str(tmp_path / "ckpt"), str(tmp_path / "run.jsonl"), final_world=2,
                         num_train=NUM_TRAIN // 2, worlds=[])


@pytest.mark.dist
@pytest.mark.timeout(600)
@pytest.mark.skipif(len(loopback_hosts()) < 3, reason="needs 3 names of this machine, found %s"
                    % loopback_hosts())
def test_horovod_launcher_resizes_2_3_1_with_a_kill_between(tmp_path):
    first, second, third = loopback_hosts()[:3]
    rec_dir = recipe_data.make_imagenet_rec(str(tmp_path / "data"), num_train=NUM_TRAIN,
                                            num_val=4, classes=4, size=40)
    work, ckpt = str(tmp_path / "job"), str(tmp_path / "ckpt")
    metrics_file = str(tmp_path / "run.jsonl")
    schedule = "0:{a}:1,{b}:1;16:{a}:1,{b}:1,{c}:1;64:{a}:1".format(a=first, b=second, c=third)
    argv = [sys.executable, os.path.join(ROOT, "scripts", "classification", "train_imagenet.py")]
    argv += TINY + rec_flags(rec_dir) + ["--local-batch-size", str(LOCAL_BATCH), "--epochs",
                                         str(EPOCHS), "--backend", "horovod",
                                         "--commit-interval", "2", "--metrics-file", metrics_file]
    token = uuid.uuid4().hex
    done, killed = threading.Event(), []
    # The worker on the third host dies in the world of 3; its host is blacklisted, and the
    # schedule drops it later anyway.
    killer = threading.Thread(target=_kill_one_worker_at, daemon=True, args=(
        os.path.join(work, "progress"), 28, token, done, killed,
        ("HOROVOD_HOSTNAME=%s" % third).encode()))
    killer.start()
    try:
        code, output = run_elastic_horovodrun(
            work, argv, schedule, 2, 1, 3, 540,
            env_extra={TOKEN_VAR: token, "HOROVOD_GLOO_TIMEOUT_SECONDS": "60"},
            launcher_args=["--checkpoint-dir", ckpt, "--max-restarts", "2"])
    finally:
        done.set()
        leftovers = kill_processes_with_token(TOKEN_VAR, token)
    assert leftovers == []
    assert code == 0, output[-5000:]
    assert killed, "no worker was killed: " + output[-3000:]
    records = check_committed_work(ckpt, metrics_file, final_world=1)
    # The world of 3 lost its third worker: a reset left it for a smaller world (2, or already
    # 1 when the schedule's last change reached the driver in the same round), as a failed
    # collective or as a membership change when the driver saw the death first.
    resets = [(r["world_size_from"], r["world_size"]) for r in records
              if r["kind"] == "event" and r["event"] == "reset"]
    assert any(old == 3 and new < 3 for old, new in resets), resets
