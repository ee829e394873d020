"""Run an elastic job across namespace hosts and act on the hosts at held iterations.

Shared by tests/multihost and the benchmarks. The job runs tests/workers/horovod_elastic.py
under ``python -m gluon_elastic.horovodrun`` on the head (the root namespace), every worker on a
namespace host through real ``ssh``. At an iteration listed with the worker's ``hold`` exit, every
rank waits; the action given for that iteration runs on the hosts (kill one, pull its link, ...),
then the ranks are released.
"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for sub in ("tests", os.path.join("tests", "dist"), os.path.join("tests", "workers"), "scripts"):
    if os.path.join(ROOT, sub) not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, sub))
# pylint: disable=wrong-import-position
import discovery  # noqa: E402
from horovod_records import Job  # noqa: E402
from hosts import Hosts  # noqa: E402
from processes import kill_job  # noqa: E402

WORKER = os.path.join(ROOT, "tests", "workers", "horovod_elastic.py")
# How long the processes of a partitioned host are watched for, after the launcher too.
WATCH_SECONDS = 90.0


class HostJob(Job):
    """A finished job across hosts: :class:`horovod_records.Job` plus what happened to the hosts.

    Attributes
    ----------
    hosts : list of str
        The namespace hosts' names.
    actions : list of dict
        One per hold: ``iteration``, ``kind``, ``host``, ``time`` (when the action started) and
        what the action recorded (``left``: when the host's processes were all gone).
    leftovers : dict
        Processes still alive on the hosts 10 s after the launcher ended (host -> [(pid, cmd)]).
    remaining : list
        What of the hosts (namespaces, links, names) existed after the teardown.
    shaping : dict
        The link shaping in force.
    """

    def __init__(self, log_dir, returncode, output, wall_seconds, cluster, actions, leftovers):
        super().__init__(log_dir, returncode, output, wall_seconds)
        self.hosts = list(cluster.hosts)
        self.actions = actions
        self.leftovers = leftovers
        self.remaining = cluster.remaining()
        self.shaping = dict(cluster.shaping)
        self.interface = cluster.interface


def kill(cluster, host):
    """Host loss: every process of ``host`` SIGKILLed at once."""
    cluster.kill_host(host)
    return {}


def silent_kill(cluster, host):
    """Silent host loss: the link goes down first, so no reset packet reaches anyone."""
    cluster.link_down(host)
    cluster.kill_host(host)
    return {}


def partition(cluster, host):
    """Partition: the link goes down, the processes live on."""
    pids = cluster.worker_pids(host)
    cluster.link_down(host)
    return {"watch": True, "pids": pids}


def after_heal(_cluster, _host):
    """Hold until every partitioned host's processes are gone and its link is back."""
    return {"after_heal": True}


ACTIONS = {"kill": kill, "silent-kill": silent_kill, "partition": partition,
           "after-heal": after_heal}


def _read_records(path, seen):
    try:
        with open(path) as fin:
            lines = fin.readlines()
    except OSError:
        return []
    fresh = [json.loads(line) for line in lines[seen:] if line.endswith("\n")]
    return fresh


def run_host_job(log_dir, count, schedule_of, holds, np_start, gloo_timeout, epochs=3,
                 timeout=240, shape=None, heal_after_left=True, max_np=None):
    """Run one elastic job on ``count`` fresh namespace hosts; returns a :class:`HostJob`.

    Parameters
    ----------
    log_dir : str
        Records, discovery script, progress file, checkpoints, output.
    count : int
        Namespace hosts.
    schedule_of : callable
        ``schedule_of(hosts)``: the discovery schedule (scripts/discovery.py) over host names.
    holds : dict
        ``{iteration: (kind, which)}``: at that iteration every rank waits, the action ``kind``
        (:data:`ACTIONS`) runs on the host of rank ``which`` (from the hold record; None for
        ``after-heal``), then the ranks are released (``after-heal``: once every partitioned
        host's processes are gone and its link is back).
    np_start : int
        ``-np``.
    gloo_timeout : int
        ``HOROVOD_GLOO_TIMEOUT_SECONDS``: what bounds the detection of a silent loss.
    epochs, timeout : int
        Epochs of the worker; seconds before the job is killed.
    shape : dict, optional
        Link shaping (:meth:`hosts.Hosts.shape`).
    heal_after_left : bool
        Bring a partitioned host's link back once its processes are gone.
    max_np : int, optional
        ``--max-np`` (default ``count``).
    """
    os.makedirs(log_dir, exist_ok=True)
    cluster = Hosts(count, shape=shape)
    proc = None
    progress_file = os.path.join(log_dir, "progress")
    actions, leftovers = [], {}
    try:
        cluster.start()
        schedule = schedule_of(cluster.hosts)
        exits = ";".join("%d:0:hold" % iteration for iteration in sorted(holds))
        script = discovery.write_script(os.path.join(log_dir, "discover.sh"), schedule,
                                        progress_file)
        command = [sys.executable, "-m", "gluon_elastic.horovodrun",
                   "--checkpoint-dir", os.path.join(log_dir, "checkpoints"), "--max-restarts", "3",
                   "-np", str(np_start), "--min-np", "1", "--max-np", str(max_np or count),
                   "--host-discovery-script", script, "--network-interface", cluster.interface,
                   "--", sys.executable, WORKER, "--log-dir", log_dir, "--schedule", schedule,
                   "--exits", exits, "--epochs", str(epochs), "--wait-for-schedule",
                   "--progress-file", progress_file]
        env = cluster.env(dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                               MXNET_MKLDNN_ENABLED="0", PYTHONPATH=ROOT,
                               HOROVOD_GLOO_TIMEOUT_SECONDS=str(gloo_timeout),
                               MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0"))
        out_path = os.path.join(log_dir, "output.txt")
        tic = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            seen = 0
            rank0 = os.path.join(log_dir, "rank0.jsonl")
            watched, pending = [], []
            ended = None
            while time.monotonic() - tic < timeout and (proc.poll() is None or any(
                    "left" not in a and time.time() - a["time"] < WATCH_SECONDS for a in watched)):
                fresh = _read_records(rank0, seen)
                seen += len(fresh)
                for record in fresh:
                    if record["event"] != "hold" or record["iteration"] not in holds:
                        continue
                    kind, which = holds[record["iteration"]]
                    host = None if which is None else record["hosts"][which]
                    action = {"iteration": record["iteration"], "kind": kind, "host": host,
                              "rank": which, "world_size": record["world_size"],
                              "time": time.time()}
                    action.update(ACTIONS[kind](cluster, host))
                    actions.append(action)
                    pending.append(action)
                    if action.get("watch"):
                        watched.append(action)
                for action in list(pending):
                    if action.get("after_heal") and not all("healed" in a for a in watched):
                        continue
                    open(os.path.join(log_dir, "release.%d" % action["iteration"]), "w").close()
                    action["released"] = time.time()
                    pending.remove(action)
                for action in watched:
                    if "left" not in action and not cluster.worker_pids(action["host"]):
                        action["left"] = time.time()
                        if heal_after_left:
                            cluster.link_up(action["host"])
                            action["healed"] = time.time()
                if ended is None and proc.poll() is not None:
                    ended = time.monotonic()
                time.sleep(0.05)
            if ended is None and proc.poll() is not None:
                ended = time.monotonic()
            wall = None if ended is None else ended - tic
        deadline = time.monotonic() + 10.0
        while proc.poll() is not None and time.monotonic() < deadline:
            leftovers = cluster.leftovers()
            if not leftovers:
                break
            time.sleep(0.2)
    finally:
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            kill_job(proc, progress_file)
            proc.wait()
        cluster.close()
    with open(os.path.join(log_dir, "actions.json"), "w") as fout:
        json.dump({"actions": actions, "leftovers": leftovers, "wall_seconds": wall,
                   "shaping": cluster.shaping}, fout, indent=1)
    with open(os.path.join(log_dir, "output.txt"), errors="replace") as fin:
        output = fin.read()
    return HostJob(log_dir, proc.returncode, output, wall, cluster, actions, leftovers)
