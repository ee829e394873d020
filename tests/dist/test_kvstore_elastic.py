"""Restart elasticity on KVStore dist_sync: the supervisor resizes and recovers a real group.

The worker (tests/workers/kv_elastic.py) logs every step of every rank, each restore with digests
of parameters and momentum, and each save. The assertions compare those logs with the checkpoint
files, with the LR computed independently from gluon_elastic.policy, and with the data set (every
sample of every epoch trained exactly once in the steps that survived).
"""
import glob
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from gluon_elastic.checkpoint import CheckpointManager
from gluon_elastic.policy import Transition, lr_scale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "workers", "kv_elastic.py")
DISCOVERY = os.path.join(ROOT, "tests", "workers", "kv_discovery.py")
FAKE_SSH = os.path.join(ROOT, "tests", "workers", "kv_fake_ssh.py")
TOKEN_VAR = "KV_ELASTIC_TEST_TOKEN"
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from processes import kill_processes_with_token  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.dist


def run_supervisor(tmp_path, supervisor_args, worker_args, timeout, extra_env=None,
                   terminate_at=None, run_name="supervisor"):
    """Run the supervisor CLI to its end; returns (exit code, output, log records).

    Everything it starts carries a token in its environment; whatever is still alive afterwards
    is killed (by pid) and reported as a failure. ``terminate_at``: send SIGTERM to the
    supervisor once the worker's progress file reaches that iteration.
    """
    token = uuid.uuid4().hex
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{TOKEN_VAR: token})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    command = ([sys.executable, "-m", "gluon_elastic.supervisor"] + supervisor_args
               + ["--checkpoint-dir", str(tmp_path / "ckpt"), "--", sys.executable, WORKER,
                  "--log-dir", str(log_dir)] + worker_args)
    out_path = tmp_path / ("%s.out" % run_name)
    tic = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while terminate_at is not None and proc.poll() is None:
                try:
                    progress = int((log_dir / "progress").read_text() or 0)
                except (OSError, ValueError):
                    progress = 0
                if progress >= terminate_at:
                    proc.send_signal(signal.SIGTERM)
                    break
                if time.monotonic() - tic > timeout:
                    break
                time.sleep(0.05)
            code = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - tic)))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            leftovers = kill_processes_with_token(TOKEN_VAR, token)
    output = out_path.read_text(errors="replace")
    assert leftovers == [], "processes left behind: %r\n%s" % (leftovers, output[-3000:])
    records = []
    for path in sorted(glob.glob(str(log_dir / "g*-r*.jsonl"))):
        with open(path) as fin:
            records.extend(json.loads(line) for line in fin if line.strip())
    return code, output, records


def _digests_from_file(manager, step):
    """Parameter and momentum digests of the checkpoint of ``step``, computed from the file with
    the worker's own digest functions."""
    # Imported here: the worker imports MXNet, and the optimizer states unpickle into NDArrays.
    from kv_elastic import momentum_digest, param_digest

    state = manager.load(step)
    # MXNet's (optimizer states, optimizer) pickle, the elastic state attached to the optimizer.
    momentum, optimizer = pickle.loads(state["trainer"])
    return (param_digest(state["params"]),
            momentum_digest([momentum[index].asnumpy() for index in sorted(momentum)]),
            optimizer.gluon_elastic["elastic"])


NUM_SAMPLES, EPOCHS, LOCAL_BATCH, BASE_LR, COMMIT = 240, 2, 4, 0.05, 4


@pytest.mark.timeout(240)
def test_schedule_2_3_1_with_kill_and_corrupted_checkpoint(tmp_path):
    schedule = "0=localhost:2;10=localhost:2,127.0.0.1:1;34=localhost:1"
    discovery = "%s %s %s %s" % (sys.executable, DISCOVERY, tmp_path / "logs" / "progress",
                                 schedule)
    code, output, records = run_supervisor(
        tmp_path,
        ["--host-discovery-script", discovery, "--discovery-interval", "0.2",
         "--progress-timeout", "20", "--start-timeout", "90", "--max-restarts", "2"],
        ["--epochs", str(EPOCHS), "--num-samples", str(NUM_SAMPLES),
         "--local-batch-size", str(LOCAL_BATCH), "--lr", str(BASE_LR),
         "--commit-interval", str(COMMIT), "--step-sleep", "0.03", "--kill-at", "1:6",
         "--corrupt-newest"],
        timeout=200)
    assert code == 0, output[-4000:]
    assert "job finished after 4 generation(s), 1 restart(s) after failures" in output

    by_gen = {}
    for record in records:
        by_gen.setdefault(record["gen"], []).append(record)
    assert sorted(by_gen) == [0, 1, 2, 3]
    worlds = {gen: {r["world"] for r in recs if r["event"] == "step"} for gen, recs in by_gen.items()}
    world_of_gen = {0: 2, 1: 3, 2: 3, 3: 1}
    assert worlds == {gen: {world} for gen, world in world_of_gen.items()}

    def events(gen, kind, rank=None):
        return [r for r in by_gen[gen] if r["event"] == kind and (rank is None or r["rank"] == rank)]

    # --- which checkpoint each generation restored, and that it holds exactly what was saved.
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    killed = events(1, "killed")
    corrupted = events(1, "corrupted")
    assert len(killed) == 1 and len(corrupted) == 1
    corrupted_path = corrupted[0]["path"]
    assert re.search(r"checkpoint %s is truncated.*falling back" % re.escape(corrupted_path),
                     output)
    saved_before_kill = sorted({r["step"] for g in (0, 1) for r in by_gen[g]
                                if r["event"] in ("saved", "stopped") and r["rank"] == 0})
    corrupted_step = int(re.search(r"(\d+)\.ckpt$", corrupted_path).group(1))
    assert corrupted_step == saved_before_kill[-1]
    restored = {}
    for gen in (1, 2, 3):
        per_rank = events(gen, "restored")
        assert sorted(r["rank"] for r in per_rank) == list(range(world_of_gen[gen]))
        steps = {r["step"] for r in per_rank}
        assert len(steps) == 1, per_rank
        step = steps.pop()
        restored[gen] = step
        params, momentum, elastic = _digests_from_file(manager, step)
        for record in per_rank:
            # Every rank holds exactly the saved parameters (BatchNorm statistics included) and
            # momentum, and continues from the saved iteration.
            assert (record["params"], record["momentum"]) == (params, momentum)
            assert record["iteration"] == step == elastic["iteration"]
    # A resize loses nothing: the relaunch starts where the stopped group saved.
    assert restored[1] == events(0, "stopped", 0)[0]["step"]
    assert restored[3] == events(2, "stopped", 0)[0]["step"]
    # After the kill, the newest file was damaged: the previous one is used.
    assert restored[2] == saved_before_kill[-2]
    assert events(2, "restored", 0)[0]["skipped"] == [corrupted_path]
    for gen, stop_gen in ((1, 0), (3, 2)):
        stopped = events(stop_gen, "stopped", 0)[0]
        restored_rank0 = events(gen, "restored", 0)[0]
        assert (restored_rank0["params"], restored_rank0["momentum"]) == \
            (stopped["params"], stopped["momentum"])

    # --- the steps that count: a generation's steps before the next one's restored iteration.
    next_start = {0: restored[1], 1: restored[2], 2: restored[3], 3: None}
    kept = [r for r in records if r["event"] == "step"
            and (next_start[r["gen"]] is None or r["iteration"] < next_start[r["gen"]])]
    rank0_iterations = sorted(r["iteration"] for r in kept if r["rank"] == 0)
    final = events(3, "finished", 0)[0]["iteration"]
    assert rank0_iterations == list(range(final))  # progress: every iteration exactly once
    for epoch in range(EPOCHS):
        indices = sorted(i for r in kept if r["epoch"] == epoch for i in r["indices"])
        assert indices == list(range(NUM_SAMPLES)), "epoch %d coverage" % epoch

    # --- the LR of every step (rank 0), from the policy: linear scaling at base batch 8 (the
    # first world's), Dynamic SGD ramp of 8 iterations per unit of k on growth, immediate cut.
    snapshots = {}   # iteration -> (world, transition state) as a checkpoint at it would hold
    for gen in (0, 1, 2, 3):
        transition = Transition("dynamic")
        if gen == 0:
            transition.reset(lr_scale("linear", 2 * LOCAL_BATCH, 2 * LOCAL_BATCH), 0)
            world = 2
        else:
            world, saved = snapshots[restored[gen]]
            transition.load_state_dict(saved)
            if world != world_of_gen[gen]:
                transition.change(restored[gen], lr_scale("linear", LOCAL_BATCH * world_of_gen[gen],
                                                          2 * LOCAL_BATCH))
            world = world_of_gen[gen]
        steps = sorted((r for r in events(gen, "step", 0)), key=lambda r: r["iteration"])
        for record in steps:
            snapshots[record["iteration"]] = (world, transition.state_dict())
            expected = BASE_LR * transition.multiplier(record["iteration"])
            assert record["lr"] == pytest.approx(expected, rel=1e-12, abs=0), record
        if steps:
            snapshots[steps[-1]["iteration"] + 1] = (world, transition.state_dict())
    # The growth 2 -> 3 ramps (k = 1.5, T = 12); the shrink 3 -> 1 cuts at once to 1/2 of base.
    first_after_growth = min((r for r in events(1, "step", 0)), key=lambda r: r["iteration"])
    assert first_after_growth["lr"] == pytest.approx(BASE_LR)
    first_after_shrink = min((r for r in events(3, "step", 0)), key=lambda r: r["iteration"])
    assert first_after_shrink["lr"] == pytest.approx(BASE_LR * 4 / 8)


@pytest.mark.timeout(150)
def test_hung_worker_is_killed_within_the_bound_and_restarts_are_limited(tmp_path):
    bound = 4.0
    code, output, records = run_supervisor(
        tmp_path, ["-n", "2", "--progress-timeout", str(bound), "--max-restarts", "1"],
        ["--epochs", "1", "--hang-at", "3", "--step-sleep", "0.02"], timeout=120)
    assert code == 124, output[-3000:]
    stalls = [float(s) for s in re.findall(r"no progress from worker \d+ for ([\d.]+) s", output)]
    assert len(stalls) == 2, output[-3000:]
    # Detected within the bound plus one heartbeat interval (1 s) and the poll period.
    assert all(bound <= stall <= bound + 1.5 for stall in stalls), stalls
    assert "restart 1 (1 of 1 allowed per 3600 s)" in output
    assert re.search(r"giving up: no progress from worker \d+ .* restart budget is used up \(1 "
                     r"restarts after failures in the last 3600 s, --max-restarts 1 per "
                     r"--restart-window 3600 s\)", output), output[-2000:]
    hangs = sorted(r["t"] for r in records if r["event"] == "hang")
    starts = sorted({r["launch_time"] for r in records if r["event"] == "started" and r["gen"] == 1})
    assert len(hangs) == 2 and starts
    # The next generation was launched at most bound + 1 s heartbeat + 1 s slack after the hang.
    assert starts[0] - hangs[0] <= bound + 2.0, (hangs, starts)


@pytest.mark.timeout(120)
def test_remote_host_runs_through_ssh_command(tmp_path):
    ssh_log = tmp_path / "ssh.log"
    code, output, records = run_supervisor(
        tmp_path, ["-H", "localhost:1,far-away-host:1", "--root-uri", "127.0.0.1",
                   "--ssh-command", "%s %s" % (sys.executable, FAKE_SSH)],
        ["--epochs", "1", "--num-samples", "40"], timeout=100,
        extra_env={"KV_FAKE_SSH_LOG": str(ssh_log)})
    assert code == 0, output[-3000:]
    lines = ssh_log.read_text().splitlines()
    assert len(lines) == 1
    host, remote = lines[0].split("\t")
    assert host == "far-away-host"
    assert "export " in remote and "DMLC_ROLE=worker" in remote and "DMLC_NUM_WORKER=2" in remote
    assert "GLUON_ELASTIC_SUPERVISED=1" in remote and remote.startswith("cd ")
    assert re.search(r"\[g0 worker 1@far-away-host\] rank \d of 2 started", output), output
    finished = [r for r in records if r["event"] == "finished"]
    assert sorted(r["rank"] for r in finished) == [0, 1]
    steps = [r for r in records if r["event"] == "step"]
    assert sorted(i for r in steps for i in r["indices"]) == list(range(40))


@pytest.mark.timeout(150)
def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    worker_args = ["--epochs", "1", "--num-samples", "96", "--step-sleep", "0.05",
                   "--commit-interval", "100"]
    code, output, records = run_supervisor(tmp_path, ["-n", "2"], worker_args, timeout=60,
                                              terminate_at=3, run_name="first")
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "asking the workers to save and stop" in output and "stopped by signal 15" in output
    stopped = [r for r in records if r["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] >= 3
    step = stopped[0]["step"]
    assert CheckpointManager(str(tmp_path / "ckpt")).steps() == [step]

    code, output, records = run_supervisor(tmp_path, ["-n", "2"], worker_args, timeout=60,
                                              run_name="second")
    assert code == 0, output[-3000:]
    restored = [r for r in records if r["event"] == "restored"]
    assert sorted(r["rank"] for r in restored) == [0, 1]
    assert {r["step"] for r in restored} == {step}
    assert (restored[0]["params"], restored[0]["momentum"]) == \
        (stopped[0]["params"], stopped[0]["momentum"])
    # The second run trained exactly the steps the first did not: 96 / 8 = 12 in all.
    first_steps = [r for r in records if r["event"] == "step" and r["iteration"] < step]
    second = [r for r in records if r["event"] == "step" and r["iteration"] >= step]
    assert sorted({r["iteration"] for r in second}) == list(range(step, 12))
    assert sorted(i for r in first_steps + second for i in r["indices"]) == list(range(96))
