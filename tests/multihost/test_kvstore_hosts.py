"""Restart elasticity on KVStore across network-namespace hosts, launched over real ``ssh``.

``python -m gluon_elastic.supervisor`` runs on the head (the root namespace) with the scheduler
and the server; every worker runs on a namespace host (tests/hosts.py) through the hosts'
``ssh`` wrapper (``--ssh-command``), with ``DMLC_INTERFACE`` naming the interface every host has.
Membership comes from a discovery script that prints a file the test rewrites:

1. two hosts; once the job has trained 10 steps a third host is listed: **resize by a host**
   (the workers agree on a step, save, stop; the group is relaunched with 3 workers);
2. once it has trained 24 steps, every process of one worker's host is SIGKILLed (its ``sshd``
   too) and the host leaves the list: **host loss** (the supervisor sees that worker's ``ssh``
   fail, kills the group and relaunches it on the two hosts left from the last checkpoint).

Asserted: exit code 0; the generations and their hosts; every rank of every relaunch restored
exactly the parameters and momentum of the checkpoint file it names; every sample of every epoch
trained exactly once in the steps that count; no process left on any host or on the head; nothing
of the hosts left after the teardown.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist"))
# pylint: disable=wrong-import-position
from hosts import Hosts, require_hosts  # noqa: E402
from processes import kill_processes_with_token  # noqa: E402
# The one-machine tests' reading of a checkpoint file, with the worker's own digests.
from test_kvstore_elastic import _digests_from_file  # noqa: E402

from gluon_elastic.checkpoint import CheckpointManager  # noqa: E402

pytestmark = pytest.mark.multihost

WORKER = os.path.join(ROOT, "tests", "workers", "kv_elastic.py")
TOKEN_VAR = "KV_HOSTS_TEST_TOKEN"
NUM_SAMPLES, EPOCHS, LOCAL_BATCH, COMMIT = 240, 2, 4, 4
GROW_AT, LOSE_AT = 10, 24
JOB_TIMEOUT = 240


def _write_hosts(path, hosts):
    with open(path + ".tmp", "w") as fout:
        fout.write("".join("%s:1\n" % host for host in hosts))
    os.replace(path + ".tmp", path)


def _progress(log_dir):
    try:
        with open(os.path.join(log_dir, "progress")) as fin:
            return int(fin.read() or 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def kv_job(tmp_path_factory):
    """Run the job; returns a dict with the exit code, output, records, hosts and events."""
    require_hosts()
    tmp = str(tmp_path_factory.mktemp("kv_hosts"))
    log_dir = os.path.join(tmp, "logs")
    os.makedirs(log_dir)
    hosts_file = os.path.join(tmp, "hosts.txt")
    token = uuid.uuid4().hex
    cluster = Hosts(3)
    proc, events, leftovers, head_leftovers = None, {}, {}, []
    try:
        cluster.start()
        h1, h2, h3 = cluster.hosts
        _write_hosts(hosts_file, [h1, h2])
        env = cluster.env(dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                               PYTHONPATH=ROOT, DMLC_INTERFACE=cluster.interface,
                               **{TOKEN_VAR: token}))
        command = [sys.executable, "-m", "gluon_elastic.supervisor",
                   "--host-discovery-script", "cat %s" % hosts_file,
                   "--discovery-interval", "0.5", "--progress-timeout", "30",
                   "--start-timeout", "120", "--max-restarts", "2",
                   "--root-uri", cluster.head_address, "--ssh-command", cluster.ssh_wrapper,
                   "--checkpoint-dir", os.path.join(tmp, "ckpt"), "--",
                   sys.executable, WORKER, "--log-dir", log_dir, "--epochs", str(EPOCHS),
                   "--num-samples", str(NUM_SAMPLES), "--local-batch-size", str(LOCAL_BATCH),
                   "--commit-interval", str(COMMIT), "--step-sleep", "0.05"]
        tic = time.monotonic()
        with open(os.path.join(tmp, "supervisor.out"), "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
            while proc.poll() is None and time.monotonic() - tic < JOB_TIMEOUT:
                progress = _progress(log_dir)
                if "grow" not in events and progress >= GROW_AT:
                    _write_hosts(hosts_file, [h1, h2, h3])
                    events["grow"] = {"time": time.time(), "progress": progress}
                if "lose" not in events and progress >= LOSE_AT:
                    # The host vanishes first; the cluster manager stops listing it right after.
                    cluster.kill_host(h2)
                    _write_hosts(hosts_file, [h1, h3])
                    events["lose"] = {"time": time.time(), "progress": progress, "host": h2}
                time.sleep(0.02)
            code = proc.wait(timeout=max(1.0, JOB_TIMEOUT - (time.monotonic() - tic)))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            leftovers = cluster.leftovers()
            if not leftovers:
                break
            time.sleep(0.2)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        head_leftovers = kill_processes_with_token(TOKEN_VAR, token)
        cluster.close()
    with open(os.path.join(tmp, "supervisor.out"), errors="replace") as fin:
        output = fin.read()
    records = []
    for path in sorted(glob.glob(os.path.join(log_dir, "g*-r*.jsonl"))):
        with open(path) as fin:
            records.extend(json.loads(line) for line in fin if line.strip())
    return {"code": code, "output": output, "records": records, "hosts": cluster.hosts,
            "events": events, "leftovers": leftovers, "head_leftovers": head_leftovers,
            "remaining": cluster.remaining(), "ckpt": os.path.join(tmp, "ckpt")}


def _by_generation(records, kind):
    found = {}
    for record in records:
        if record["event"] == kind:
            found.setdefault(record["gen"], []).append(record)
    return found


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_kvstore_resize_by_a_host(kv_job):
    assert kv_job["code"] == 0, kv_job["output"][-4000:]
    h1, h2, h3 = kv_job["hosts"]
    output = kv_job["output"]
    generations = re.findall(r"\[supervisor\] generation (\d+): (\d+) workers on (\S+)", output)
    assert generations[:2] == [("0", "2", "%s:1,%s:1" % (h1, h2)),
                               ("1", "3", "%s:1,%s:1,%s:1" % (h1, h2, h3))]
    assert "membership changed to %s:1,%s:1,%s:1 (2 -> 3 workers); relaunching" % (h1, h2, h3) \
        in output
    # Every worker ran on a namespace host, through ssh.
    assert re.findall(r"\[g1 worker (\d)@(\S+)\] rank \d of 3 started", output) and \
        not re.search(r"@(localhost|127\.0\.0\.1)\]", output)
    stopped = _by_generation(kv_job["records"], "stopped")[0]
    restored = _by_generation(kv_job["records"], "restored")[1]
    assert sorted(r["rank"] for r in restored) == [0, 1, 2]
    # A resize loses nothing: every rank restores exactly what the stopped group saved.
    assert {(r["step"], r["params"], r["momentum"]) for r in restored} == \
        {(stopped[0]["step"], stopped[0]["params"], stopped[0]["momentum"])}


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_kvstore_host_loss(kv_job):
    assert kv_job["code"] == 0, kv_job["output"][-4000:]
    h1, _, h3 = kv_job["hosts"]
    output = kv_job["output"]
    assert kv_job["events"]["lose"]["progress"] >= LOSE_AT
    assert "job finished after 3 generation(s), 1 restart(s) after failures" in output
    # The lost host's worker: its ssh ends with 255 when the host's sshd dies.
    assert re.search(r"\[supervisor\] worker \d exited with code 255; killed the group, restart "
                     r"1\b", output), output[-3000:]
    generations = re.findall(r"\[supervisor\] generation (\d+): (\d+) workers on (\S+)", output)
    assert generations[2:] == [("2", "2", "%s:1,%s:1" % (h1, h3))]
    manager = CheckpointManager(kv_job["ckpt"])
    restored = _by_generation(kv_job["records"], "restored")
    for gen in (1, 2):
        steps = {r["step"] for r in restored[gen]}
        assert len(steps) == 1, restored[gen]
        step = steps.pop()
        params, momentum, elastic = _digests_from_file(manager, step)
        assert {(r["params"], r["momentum"], r["iteration"]) for r in restored[gen]} == \
            {(params, momentum, step)}
        assert elastic["iteration"] == step
    # The steps that count: each generation's before the next one's restored iteration.
    start = {gen: restored[gen][0]["step"] for gen in (1, 2)}
    next_start = {0: start[1], 1: start[2], 2: None}
    kept = [r for r in kv_job["records"] if r["event"] == "step"
            and (next_start[r["gen"]] is None or r["iteration"] < next_start[r["gen"]])]
    final = _by_generation(kv_job["records"], "finished")[2][0]["iteration"]
    assert sorted(r["iteration"] for r in kept if r["rank"] == 0) == list(range(final))
    for epoch in range(EPOCHS):
        indices = sorted(i for r in kept if r["epoch"] == epoch for i in r["indices"])
        assert indices == list(range(NUM_SAMPLES)), "epoch %d coverage" % epoch


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_kvstore_leaves_nothing_on_any_host(kv_job):
    assert kv_job["leftovers"] == {}
    assert kv_job["head_leftovers"] == []
    assert kv_job["remaining"] == []
