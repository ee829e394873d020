"""Launch an MXNet KVStore group (scheduler, servers, workers) on this machine.

    python -m gluon_elastic.launch -n 2 -s 1 -- python scripts/train_mnist.py --backend dist_sync

Every process gets the ``DMLC_*`` variables of its role on a free loopback port; the servers and the
scheduler run ``python -c "import mxnet"`` (MXNet starts its server loop on import when
``DMLC_ROLE`` says so). Each worker also gets its index among the workers of its host
(``GLUON_ELASTIC_LOCAL_RANK``, ``GLUON_ELASTIC_LOCAL_SIZE``), which picks its GPUs
(:mod:`gluon_elastic.devices`); ``--dry-run`` prints that plan (:func:`process_plan`; with
``--num-gpus N``, N GPUs per worker) without starting anything. Output is streamed line by line
with a ``[worker 0]`` style prefix.
SIGINT/SIGTERM are forwarded to the whole group. The launcher returns the first non-zero exit code
of any process (a failed worker stops the others, since ps-lite survivors would block forever), or
0 when every worker succeeded; no process of the group outlives it.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .devices import device_ids, format_devices
from .flags import non_negative_int, positive_float, positive_int
from .restart import ENV

__all__ = ["Group", "free_port", "process_plan", "format_plan", "add_plan_args",
           "run_forwarding_signals",
           "RestartBudget", "add_restart_args", "processes_with_env", "main"]


def free_port(host="127.0.0.1"):
    """A TCP port free on ``host`` at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def processes_with_env(var, value):
    """Pids of live processes of this user whose environment holds ``var=value`` (no zombies)."""
    needle = ("%s=%s" % (var, value)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:  # other users' processes are unreadable, and any may exit while we look
            with open("/proc/%s/environ" % entry, "rb") as fin:
                if needle not in fin.read().split(b"\0"):
                    continue
            with open("/proc/%s/stat" % entry) as stat:
                if stat.read().rsplit(")", 1)[-1].split()[0] != "Z":
                    found.append(int(entry))
        except OSError:
            continue
    return found


class RestartBudget:
    """At most ``max_restarts`` restarts within any ``window`` seconds (a sliding window).

    A long job on spot capacity that fails now and then keeps going for days; a job that fails
    over and over stops. Used by both launchers (:mod:`gluon_elastic.supervisor`,
    :mod:`gluon_elastic.horovodrun`).
    """

    def __init__(self, max_restarts, window=3600.0):
        if max_restarts < 0:
            raise ValueError("max_restarts must be >= 0, got %r" % (max_restarts,))
        if not window > 0:
            raise ValueError("the restart window must be > 0 seconds, got %r" % (window,))
        self.max_restarts = max_restarts
        self.window = float(window)
        self._times = []            # time.monotonic() of each restart

    @property
    def used(self):
        """Restarts within the window that ends now."""
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window]
        return len(self._times)

    def allows(self):
        """Whether one more restart fits in the budget."""
        return self.used < self.max_restarts

    def record(self):
        """Count a restart made now."""
        self._times.append(time.monotonic())


def add_restart_args(parser, what="relaunches"):
    """``--max-restarts`` and ``--restart-window``, the same in every launcher."""
    parser.add_argument("--max-restarts", type=non_negative_int, default=3,
                        help="%s allowed within --restart-window; one more in that window ends "
                             "the job (default: %%(default)s)" % what)
    parser.add_argument("--restart-window", type=positive_float, default=3600.0,
                        help="seconds over which --max-restarts counts them, a sliding window, "
                             "so failures spread over days do not end a long job (default: "
                             "%(default)s, i.e. 3 per hour)")


def run_forwarding_signals(run, on_signal):
    """Return ``run()``, with SIGINT and SIGTERM passed to ``on_signal(signum)`` meanwhile.

    What every launcher does around its job: a signal to the launcher reaches the job, which then
    ends in order (save, stop, kill what is left); the previous handlers come back afterwards.
    """
    previous = {sig: signal.signal(sig, lambda signum, _frame: on_signal(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def process_plan(slot_hosts, devices_per_process=1):
    """Who runs where: one entry per worker slot, in rank order.

    Parameters
    ----------
    slot_hosts : list of str
        The host of each worker slot (``['a', 'a', 'b', ...]``; a host's slots are contiguous
        when they come from a ``HOST:SLOTS`` list).
    devices_per_process : int
        GPUs each worker drives (the recipes' ``--num-gpus``, at least 1).

    Returns
    -------
    list of dict
        ``host``, ``rank``, ``local_rank`` (index among the workers of that host),
        ``local_size`` and ``devices`` (GPU ids, :func:`gluon_elastic.devices.device_ids`:
        ``local_rank * N .. local_rank * N + N - 1`` of the GPUs its host shows it) of each
        worker. Horovod ranks follow this order; ps-lite (KVStore) numbers the workers itself,
        so there ``rank`` is the launch order.
    """
    plan, seen = [], {}
    sizes = {host: slot_hosts.count(host) for host in slot_hosts}
    for rank, host in enumerate(slot_hosts):
        local_rank = seen.get(host, 0)
        seen[host] = local_rank + 1
        plan.append({"host": host, "rank": rank, "local_rank": local_rank,
                     "local_size": sizes[host],
                     "devices": device_ids(local_rank, devices_per_process)})
    return plan


def format_plan(plan):
    """One line per worker: ``host=H rank=R local_rank=L devices=gpu(I),gpu(J)...``."""
    return "\n".join("host=%s rank=%d local_rank=%d devices=%s"
                     % (entry["host"], entry["rank"], entry["local_rank"],
                        format_devices("gpu", entry["devices"]))
                     for entry in plan)


def add_plan_args(parser):
    """``--dry-run`` and ``--num-gpus``, the same in every launcher."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the process plan (host, rank, local rank, devices) and exit "
                             "without starting anything")
    parser.add_argument("--num-gpus", type=positive_int, default=1,
                        help="GPUs each worker process drives, as the workers' own --num-gpus "
                             "says (worker with local rank r: gpu(r*N) .. gpu(r*N+N-1)); the "
                             "launcher uses it for the --dry-run plan only (default: "
                             "%(default)s)")


class Group:
    """One KVStore group: scheduler, ``num_servers`` servers and ``num_workers`` workers.

    Parameters
    ----------
    command : list of str
        Worker command line.
    num_workers, num_servers : int
        Group size.
    env : dict, optional
        Extra environment for every process (``GLUON_ELASTIC_*`` settings, ``OMP_NUM_THREADS``).
    output : file, optional
        Where prefixed lines go (default stdout).
    host : str
        Scheduler address; loopback by default.
    """

    def __init__(self, command, num_workers, num_servers=1, env=None, output=None,
                 host="127.0.0.1"):
        if num_workers < 1 or num_servers < 1:
            raise ValueError("num_workers and num_servers must be >= 1, got %r and %r"
                             % (num_workers, num_servers))
        if not command:
            raise ValueError("no worker command given")
        self.command = list(command)
        self.num_workers = num_workers
        self.num_servers = num_servers
        self.env = dict(env or {})
        self.output = output or sys.stdout
        self.host = host
        self.port = None
        self.procs = {}          # name -> Popen
        self._threads = []
        self._lock = threading.Lock()

    def _base_env(self):
        env = dict(os.environ)
        env.update(self.env)
        env.update({"DMLC_PS_ROOT_URI": self.host, "DMLC_PS_ROOT_PORT": str(self.port),
                    "DMLC_NUM_SERVER": str(self.num_servers),
                    "DMLC_NUM_WORKER": str(self.num_workers), "PS_VERBOSE": env.get("PS_VERBOSE", "0")})
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, name, role, command, extra_env=None):
        env = self._base_env()
        env["DMLC_ROLE"] = role
        env.update(extra_env or {})
        # A new session per process: the whole tree of each can be signalled at once.
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        thread = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def _pump(self, name, proc):
        prefix = "[%s] " % name
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self.output.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                self.output.flush()
        proc.stdout.close()

    def start(self):
        """Start scheduler, servers and workers; returns self."""
        self.port = free_port(self.host)
        server_cmd = [sys.executable, "-c", "import mxnet"]
        self._spawn("scheduler", "scheduler", server_cmd)
        for index in range(self.num_servers):
            self._spawn("server %d" % index, "server", server_cmd)
        for entry in self.plan():
            # ps-lite assigns ranks itself; the launch index is only a label and a hint.
            self._spawn("worker %d" % entry["rank"], "worker", self.command,
                        {ENV["launch_index"]: str(entry["rank"]),
                         ENV["local_rank"]: str(entry["local_rank"]),
                         ENV["local_size"]: str(entry["local_size"])})
        return self

    def plan(self, devices_per_process=1):
        """The workers' :func:`process_plan` (all on this machine)."""
        return process_plan(["localhost"] * self.num_workers, devices_per_process)

    def workers(self):
        return {name: proc for name, proc in self.procs.items() if name.startswith("worker")}

    def poll(self):
        """``(first_failure, all_workers_done)``; first_failure is ``(name, code)`` or None."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                return (name, code), False
        return None, all(proc.poll() == 0 for proc in self.workers().values())

    def signal(self, signum):
        """Send ``signum`` to every live process of the group (whole process trees)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, grace=5.0):
        """Terminate what still runs, then kill what outlives ``grace`` seconds."""
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def wait(self, timeout=None, poll_interval=0.1):
        """Run to the end; returns the first non-zero exit code, or 0.

        Once every worker has exited 0, scheduler and servers get a few seconds to finish on their
        own before they are stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                failure, done = self.poll()
                if failure is not None:
                    name, code = failure
                    self._note("%s exited with code %d; stopping the group" % (name, code))
                    return code
                if done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self._note("timed out after %.0f s; stopping the group" % timeout)
                    return 124
                time.sleep(poll_interval)
            end = time.monotonic() + 10.0
            while time.monotonic() < end and any(p.poll() is None for p in self.procs.values()):
                time.sleep(poll_interval)
            failure, _ = self.poll()
            return failure[1] if failure else 0
        finally:
            self.stop()

    def _note(self, text):
        with self._lock:
            self.output.write("[launch] %s\n" % text)
            self.output.flush()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gluon_elastic.launch",
        description="Run an MXNet KVStore group (scheduler, servers, workers) on this machine.")
    parser.add_argument("-n", "--num-workers", type=positive_int, required=True,
                        help="worker processes")
    parser.add_argument("-s", "--num-servers", type=positive_int, default=1,
                        help="server processes")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop the group after this many seconds (exit code 124)")
    add_plan_args(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="worker command, after '--'")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the worker command after '--'")
    return args


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    group = Group(args.command, args.num_workers, args.num_servers)
    if args.dry_run:
        print(format_plan(group.plan(args.num_gpus)))
        return 0

    return run_forwarding_signals(lambda: group.start().wait(timeout=args.timeout), group.signal)


if __name__ == "__main__":
    sys.exit(main())
