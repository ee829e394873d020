"""Restart supervisor: elastic KVStore training by relaunching the group from saved state.

    python -m gluon_elastic.supervisor -H localhost:2 --checkpoint-dir /tmp/job -- \\
        python scripts/train_mnist.py --backend dist_sync --checkpoint-dir /tmp/job

    python -m gluon_elastic.supervisor --host-discovery-script ./hosts.sh --checkpoint-dir ckpt \\
        --max-restarts 3 --progress-timeout 30 -- python train.py --backend dist_sync

Contract
--------
The worker script must drive a :class:`gluon_elastic.restart.RestartAgent` (``restore`` at start,
``after_step`` after every step): it carries the progress markers, the save and the agreed stop.
MXNet's ``dist_sync`` fixes its worker count when the processes start, and when a worker dies the
survivors block in push/pull forever. The supervisor therefore owns the group's life, the way
TorchElastic does for PyTorch:

* **Membership** comes from a fixed host list (``-H host:slots,...`` or ``-n N`` for this machine)
  or from a discovery script run every ``--discovery-interval`` seconds that prints ``host:slots``
  lines (Horovod's format; ``host`` alone means one slot). The world size is the sum of slots,
  capped by ``--max-workers``; the group waits while it is below ``--min-workers``.
* **Membership change**: the supervisor writes ``save`` to every worker's stdin; the workers'
  :class:`gluon_elastic.restart.RestartAgent` agree on the next step boundary through the KVStore,
  rank 0 saves, every worker exits 0 with a ``stopped`` marker; the group is stopped and relaunched
  with the new world. If the workers do not stop within ``--progress-timeout`` seconds, they are
  killed and the relaunch starts from the last saved state. Resizes do not count as restarts.
* **Failure**: a process of the group that exits non-zero, or a worker with no progress marker
  for ``--progress-timeout`` seconds (default 30; ``--start-timeout`` before its first marker),
  makes the supervisor kill the whole group (no survivor is left blocked) and relaunch it from the
  last saved state. After ``--max-restarts`` such restarts within ``--restart-window`` seconds
  (default 3 per hour, a sliding window) it gives up with a message naming the cause and the last
  checkpoint, and returns the failing exit code. Workers report progress after
  each step (at most once a second), so ``--progress-timeout`` must exceed the longest step plus a
  save: raise it for large models on slow devices (a ResNet-50 step at 32 images per worker takes
  about a minute on one CPU core).
* **Devices**: worker ``i`` gets its index among the workers of its host
  (``GLUON_ELASTIC_LOCAL_RANK``, see :func:`gluon_elastic.launch.process_plan`), which picks its
  GPUs (:mod:`gluon_elastic.devices`); ``--dry-run`` prints the plan of the current membership
  (``--num-gpus N``: N GPUs per worker).
* **Generations**: each launch gets ``GLUON_ELASTIC_GENERATION`` (0, 1, ...), the checkpoint
  directory in ``GLUON_ELASTIC_CHECKPOINT_DIR`` and the spawn time in
  ``GLUON_ELASTIC_LAUNCH_TIME``. Worker output is prefixed ``[g<generation> worker <i>@<host>]``;
  the agent's markers are consumed, not echoed.

Hosts and ``ssh``
-----------------
Slots of a host that names this machine (``localhost``, ``127.0.0.1``, any loopback address, this
machine's host name or one of its addresses) run as local processes. Other hosts run their workers
the way MXNet's own ssh launcher does: ``ssh -o StrictHostKeyChecking=no -p PORT HOST 'cd CWD;
export DMLC_...=...; CMD'``, with the working directory and the Python interpreter path assumed
identical on every host, passwordless ``ssh`` set up, and the checkpoint directory on a shared file
system. The scheduler and the servers run on this machine, at ``--root-uri`` (default: loopback when
every host is local, else this machine's address). ``ssh`` without a terminal does not forward
signals: a remote worker notices the end of its stdin when its ``ssh`` is killed and exits
(see :mod:`gluon_elastic.restart`). The same machine under two names (``localhost:2,127.0.0.1:1``)
exercises multi-host membership on one machine; ``--ssh-command`` replaces ``ssh`` (tests use a
stand-in that runs the remote command locally).
"""
import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from .flags import positive_float, positive_int
from .launch import (Group, RestartBudget, add_plan_args, add_restart_args, format_plan,
                     process_plan, run_forwarding_signals)
from .restart import ENV, PROGRESS_MARKER, SAVE_REQUEST, STOPPED_MARKER

__all__ = ["Supervisor", "SupervisedGroup", "parse_hosts", "read_discovery", "is_local_host",
           "main"]

# Variables a remote worker needs; the rest of this machine's environment stays here.
_FORWARDED_PREFIXES = ("DMLC_", "PS_", "GLUON_ELASTIC_", "OMP_", "MXNET_", "PYTHON")


def parse_hosts(text, source="host list"):
    """Parse ``host:slots`` items separated by commas or new lines into ``[(host, slots)]``.

    Blank lines and ``#`` comments are skipped; ``host`` alone means one slot; a host given twice
    has its slots added (order of first appearance kept).
    """
    hosts = {}
    for raw in text.replace(",", "\n").splitlines():
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        host, sep, slots = item.rpartition(":")
        if not sep:
            host, slots = item, "1"
        try:
            count = int(slots)
        except ValueError:
            raise ValueError("%s: expected HOST:SLOTS, got %r" % (source, item)) from None
        if not host or count < 0:
            raise ValueError("%s: expected HOST:SLOTS with SLOTS >= 0, got %r" % (source, item))
        hosts[host] = hosts.get(host, 0) + count
    return [(host, slots) for host, slots in hosts.items() if slots > 0]


def read_discovery(script, timeout=10.0):
    """Run a discovery script and parse its ``host:slots`` lines."""
    result = subprocess.run(script if isinstance(script, list) else [script], capture_output=True,
                            timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError("host discovery script %r exited with code %d: %s"
                           % (script, result.returncode,
                              result.stderr.decode("utf-8", "replace").strip()[-500:]))
    return parse_hosts(result.stdout.decode("utf-8", "replace"), source=str(script))


def _local_names():
    names = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
    for name in (socket.gethostname(), socket.getfqdn()):
        names.add(name)
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except socket.gaierror:
            pass
    return names


def is_local_host(host, local_names=None):
    """Whether ``host`` names this machine (loopback, its host name or one of its addresses)."""
    names = _local_names() if local_names is None else local_names
    if host in names or host.startswith("127."):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return any(addr.startswith("127.") or addr == "::1" or addr in names for addr in addresses)


def world_of(hosts, max_workers=None):
    """One entry per worker slot, ``[host, host, ...]``, capped at ``max_workers``."""
    slots = [host for host, count in hosts for _ in range(count)]
    return slots if max_workers is None else slots[:max_workers]


class SupervisedGroup(Group):
    """A :class:`gluon_elastic.launch.Group` whose workers the supervisor can talk to.

    Workers get a pipe on stdin (save requests) and their progress and stop markers are consumed
    from stdout. Worker ``i`` runs on ``slot_hosts[i]``: locally when that host is this machine,
    else through ``ssh_command``.
    """

    def __init__(self, command, slot_hosts, num_servers=1, env=None, output=None,
                 host="127.0.0.1", generation=0, ssh_command=("ssh",), ssh_port=None,
                 local_names=None):
        super().__init__(command, len(slot_hosts), num_servers=num_servers, env=env,
                         output=output, host=host)
        self.slot_hosts = list(slot_hosts)
        self.generation = generation
        self.ssh_command = list(ssh_command)
        self.ssh_port = ssh_port
        self._local_names = local_names if local_names is not None else _local_names()
        self.started_at = None
        self.last_progress = {}     # worker name -> time.monotonic() of its last marker
        self.stopped_workers = set()
        self.stop_requested_at = None
        self.stop_requested_wall = None

    def start(self):
        self.started_at = time.monotonic()
        return super().start()

    def plan(self):
        """The workers' :func:`gluon_elastic.launch.process_plan` over their hosts."""
        return process_plan(self.slot_hosts)

    def _spawn(self, name, role, command, extra_env=None):
        if role != "worker":
            return super()._spawn(name, role, command, extra_env)
        index = int(name.split()[-1])
        host = self.slot_hosts[index]
        env = self._base_env()
        env["DMLC_ROLE"] = role
        env.update(extra_env or {})
        env[ENV["generation"]] = str(self.generation)
        env[ENV["supervised"]] = "1"
        env[ENV["launch_time"]] = repr(time.time())
        if not is_local_host(host, self._local_names):
            command = self._ssh_wrap(host, command, env)
        label = "%s@%s" % (name, host)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                start_new_session=True)
        self.procs[name] = proc
        thread = threading.Thread(target=self._pump, args=(label, proc), daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def _ssh_wrap(self, host, command, env):
        exports = " ".join("%s=%s" % (key, shlex.quote(value)) for key, value in sorted(env.items())
                           if key.startswith(_FORWARDED_PREFIXES))
        remote = "cd %s && export %s && exec %s" % (shlex.quote(os.getcwd()), exports,
                                                    " ".join(shlex.quote(arg) for arg in command))
        port = ["-p", str(self.ssh_port)] if self.ssh_port else []
        return self.ssh_command + ["-o", "StrictHostKeyChecking=no"] + port + [host, remote]

    def _pump(self, name, proc):
        worker = name.split("@")[0]
        prefix = "[g%d %s] " % (self.generation, name)
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            if line.startswith(PROGRESS_MARKER):
                self.last_progress[worker] = time.monotonic()
                continue
            if line.startswith(STOPPED_MARKER):
                self.last_progress[worker] = time.monotonic()
                self.stopped_workers.add(worker)
                continue
            with self._lock:
                self.output.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                self.output.flush()
        proc.stdout.close()

    def request_save(self):
        """Ask every worker to save and stop at the next agreed step boundary."""
        self.stop_requested_at = time.monotonic()
        self.stop_requested_wall = time.time()
        for proc in self.workers().values():
            try:
                proc.stdin.write(SAVE_REQUEST + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # already gone; poll() reports it

    def stalled_worker(self, progress_timeout, start_timeout):
        """``(name, seconds)`` of a live worker without progress past its bound, or None."""
        now = time.monotonic()
        for name, proc in self.workers().items():
            if proc.poll() is not None:
                continue
            last = self.last_progress.get(name)
            if last is None:
                if now - self.started_at > start_timeout:
                    return name, now - self.started_at
            elif now - last > progress_timeout:
                return name, now - last
        return None

    def stop(self, grace=5.0):
        for proc in self.workers().values():
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        super().stop(grace)


class Outcome:
    """How a generation ended: ``kind`` in {'done', 'resize', 'failed', 'interrupted'}, a ``reason``."""

    def __init__(self, kind, reason="", code=0, hosts=None):
        self.kind = kind
        self.reason = reason
        self.code = code
        self.hosts = hosts

    def __repr__(self):
        return "Outcome(%r, %r, code=%r)" % (self.kind, self.reason, self.code)


class Supervisor:
    """Run a KVStore job across membership changes and failures (see the module docstring).

    Parameters
    ----------
    command : list of str
        Worker command line.
    hosts : list of (str, int), optional
        Fixed membership. Exactly one of ``hosts`` and ``discovery`` is given.
    discovery : str or callable, optional
        Discovery script (path or argv list), or a function returning ``[(host, slots)]``.
    num_servers : int
        KVStore servers (run on this machine).
    checkpoint_dir : str, optional
        Passed to the workers in ``GLUON_ELASTIC_CHECKPOINT_DIR``; named in failure messages.
    max_restarts : int
        Relaunches after failures allowed within ``restart_window`` (resizes are not counted);
        one more failure in the window ends the job.
    restart_window : float
        Seconds over which failures are counted: a job that fails now and then over days keeps
        going, a job that fails over and over stops.
    progress_timeout : float
        Seconds without a progress marker from a worker before the group is declared hung; also
        the time workers get to stop after a save request.
    start_timeout : float
        Seconds from spawn to a worker's first marker (process start, imports, data, KVStore init).
    discovery_interval : float
        Seconds between discovery runs.
    min_workers, max_workers : int
        Bounds on the world size.
    env : dict, optional
        Extra environment for every process.
    output : file, optional
        Where prefixed worker lines and the supervisor's own lines go.
    root_uri : str, optional
        Scheduler address; default loopback when every host is local, else this machine's address.
    ssh_command : list of str
        The ``ssh`` client and its options.
    ssh_port : int, optional
        Port of the remote ``sshd``.
    """

    def __init__(self, command, hosts=None, discovery=None, num_servers=1, checkpoint_dir=None,
                 max_restarts=3, restart_window=3600.0, progress_timeout=30.0, start_timeout=120.0,
                 discovery_interval=1.0, min_workers=1, max_workers=None, env=None, output=None,
                 root_uri=None, ssh_command=("ssh",), ssh_port=None):
        if (hosts is None) == (discovery is None):
            raise ValueError("give exactly one of hosts and discovery")
        if not command:
            raise ValueError("no worker command given")
        if not progress_timeout > 0 or not start_timeout > 0:
            raise ValueError("progress_timeout and start_timeout must be > 0, got %r and %r"
                             % (progress_timeout, start_timeout))
        if min_workers < 1 or (max_workers is not None and max_workers < min_workers):
            raise ValueError("need 1 <= min_workers <= max_workers, got %r and %r"
                             % (min_workers, max_workers))
        self.command = list(command)
        self.fixed_hosts = list(hosts) if hosts is not None else None
        self.discovery = discovery
        self.num_servers = num_servers
        self.checkpoint_dir = os.path.abspath(checkpoint_dir) if checkpoint_dir else None
        self.budget = RestartBudget(max_restarts, restart_window)
        self.progress_timeout = float(progress_timeout)
        self.start_timeout = float(start_timeout)
        self.discovery_interval = float(discovery_interval)
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.env = dict(env or {})
        if self.checkpoint_dir:
            self.env[ENV["checkpoint_dir"]] = self.checkpoint_dir
        self.output = output or sys.stdout
        self.root_uri = root_uri
        self.ssh_command = list(ssh_command)
        self.ssh_port = ssh_port
        self.local_names = _local_names()
        self.group = None
        self.generation = 0
        self.restarts = 0
        self.history = []           # one dict per generation: world, hosts, outcome, times
        self._interrupted = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ membership
    def discover(self):
        """Current membership ``[(host, slots)]``."""
        if self.fixed_hosts is not None:
            return self.fixed_hosts
        if callable(self.discovery):
            return list(self.discovery())
        return read_discovery(self.discovery)

    def _discover_safely(self, current):
        try:
            return self.discover()
        except Exception as err:  # a flaky script must not stop the job: keep the membership
            self.note("host discovery failed (%s); keeping %s" % (err, _format_hosts(current)))
            return current

    def _wait_for_hosts(self):
        hosts = self._discover_safely([])
        waited = False
        while len(world_of(hosts, self.max_workers)) < self.min_workers:
            if self._interrupted is not None:
                return None
            if not waited:
                self.note("waiting for at least %d worker slots (have %s)"
                          % (self.min_workers, _format_hosts(hosts) or "none"))
                waited = True
            time.sleep(self.discovery_interval)
            hosts = self._discover_safely(hosts)
        return hosts

    # ------------------------------------------------------------------------------------ run
    def note(self, text):
        """Write one line of the supervisor's own to the output."""
        with self._lock:
            self.output.write("[supervisor] %s\n" % text)
            self.output.flush()

    def interrupt(self, signum):
        """Stop the job (from a signal handler): the group is asked to save, then stopped."""
        self._interrupted = signum

    def run(self):
        """Run the job to its end; returns 0, or the exit code that made it give up."""
        while True:
            hosts = self._wait_for_hosts()
            if hosts is None:
                return 128 + self._interrupted
            slot_hosts = world_of(hosts, self.max_workers)
            root_uri = self.root_uri or (
                "127.0.0.1" if all(is_local_host(h, self.local_names) for h in slot_hosts)
                else socket.gethostbyname(socket.gethostname()))
            self.group = SupervisedGroup(
                self.command, slot_hosts, num_servers=self.num_servers, env=self.env,
                output=self.output, host=root_uri, generation=self.generation,
                ssh_command=self.ssh_command, ssh_port=self.ssh_port,
                local_names=self.local_names)
            record = {"generation": self.generation, "world_size": len(slot_hosts),
                      "hosts": hosts, "launched": time.time()}
            self.history.append(record)
            self.note("generation %d: %d workers on %s" % (self.generation, len(slot_hosts),
                                                           _format_hosts(hosts)))
            try:
                self.group.start()
                outcome = self._watch(self.group, hosts)
            finally:
                record["stopping"] = time.time()
                self.group.stop()
                record["stopped"] = time.time()
            record["outcome"] = outcome.kind
            record["reason"] = outcome.reason
            record["save_requested"] = self.group.stop_requested_wall
            if outcome.kind == "done":
                self.note("job finished after %d generation(s), %d restart(s) after failures"
                          % (self.generation + 1, self.restarts))
                return 0
            if outcome.kind == "interrupted":
                self.note("stopped by signal %d" % self._interrupted)
                return 128 + self._interrupted
            if outcome.kind == "failed":
                budget = self.budget
                if not budget.allows():
                    self.note("giving up: %s, and the restart budget is used up (%d restarts "
                              "after failures in the last %.0f s, --max-restarts %d per "
                              "--restart-window %.0f s). Last saved state: %s. Fix the cause and "
                              "rerun the same command to resume from it."
                              % (outcome.reason, budget.used, budget.window,
                                 budget.max_restarts, budget.window, self._last_checkpoint()))
                    # A signal death (-9) becomes the shell's convention (137).
                    return outcome.code if outcome.code > 0 else 128 - outcome.code \
                        if outcome.code < 0 else 1
                self.restarts += 1
                budget.record()
                self.note("%s; killed the group, restart %d (%d of %d allowed per %.0f s) from "
                          "the last saved state (%s)"
                          % (outcome.reason, self.restarts, budget.used, budget.max_restarts,
                             budget.window, self._last_checkpoint()))
            else:
                self.note("membership changed to %s (%s); relaunching"
                          % (_format_hosts(outcome.hosts), outcome.reason))
            self.generation += 1

    def _last_checkpoint(self):
        if not self.checkpoint_dir:
            return "none (no --checkpoint-dir)"
        from .checkpoint import CheckpointManager  # lists files; imports no MXNet
        try:
            steps = CheckpointManager(self.checkpoint_dir).steps()
        except OSError:
            steps = []
        return CheckpointManager(self.checkpoint_dir).path(steps[-1]) if steps else \
            "none yet in %s" % self.checkpoint_dir

    def _watch(self, group, hosts, poll_interval=0.05):
        next_discovery = time.monotonic() + self.discovery_interval
        pending_hosts = None
        pending_reason = ""
        while True:
            failure, done = group.poll()
            if failure is not None:
                name, code = failure
                return Outcome("failed", "%s exited with code %d" % (name, code), code)
            if done:
                if group.stopped_workers:
                    if self._interrupted is not None:
                        return Outcome("interrupted")
                    return Outcome("resize", pending_reason or "workers stopped",
                                   hosts=pending_hosts or hosts)
                return Outcome("done")
            if group.stop_requested_at is not None:
                waited = time.monotonic() - group.stop_requested_at
                if waited > self.progress_timeout:
                    if self._interrupted is not None:
                        return Outcome("interrupted")
                    # Not a failure of the job: resize from the last saved state.
                    return Outcome("resize", "workers did not stop within %.0f s of the save "
                                   "request; killed them" % waited, hosts=pending_hosts or hosts)
            else:
                stalled = group.stalled_worker(self.progress_timeout, self.start_timeout)
                if stalled is not None:
                    name, seconds = stalled
                    return Outcome("failed", "no progress from %s for %.2f s (bound %.0f s)"
                                   % (name, seconds, self.progress_timeout), 124)
                if self._interrupted is not None:
                    self.note("signal %d: asking the workers to save and stop"
                              % self._interrupted)
                    group.request_save()
                elif time.monotonic() >= next_discovery:
                    next_discovery = time.monotonic() + self.discovery_interval
                    new_hosts = self._discover_safely(hosts)
                    if world_of(new_hosts, self.max_workers) != world_of(hosts, self.max_workers):
                        pending_hosts = new_hosts
                        pending_reason = "%d -> %d workers" % (
                            len(world_of(hosts, self.max_workers)),
                            len(world_of(new_hosts, self.max_workers)))
                        self.note("membership change %s: asking the workers to save and stop"
                                  % pending_reason)
                        group.request_save()
            time.sleep(poll_interval)


def _format_hosts(hosts):
    return ",".join("%s:%d" % (host, slots) for host, slots in hosts)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gluon_elastic.supervisor",
        description="Run an elastic MXNet KVStore job: relaunch the group from saved state when "
                    "its membership changes or a worker fails.")
    members = parser.add_mutually_exclusive_group(required=True)
    members.add_argument("-n", "--num-workers", type=positive_int,
                         help="a fixed group of this many workers on this machine")
    members.add_argument("-H", "--hosts", help="fixed membership, HOST:SLOTS[,HOST:SLOTS...]")
    members.add_argument("--host-discovery-script",
                         help="command (split like a shell would) printing HOST:SLOTS lines, "
                              "run every --discovery-interval seconds")
    parser.add_argument("-s", "--num-servers", type=positive_int, default=1, help="server processes")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoint directory, passed to the workers (shared by all hosts)")
    add_restart_args(parser, "relaunches after failures")
    add_plan_args(parser)
    parser.add_argument("--progress-timeout", type=positive_float, default=30.0,
                        help="seconds without progress from a worker before the group is killed "
                             "and relaunched (default: %(default)s)")
    parser.add_argument("--start-timeout", type=positive_float, default=120.0,
                        help="seconds from spawn to a worker's first progress marker "
                             "(default: %(default)s)")
    parser.add_argument("--discovery-interval", type=positive_float, default=1.0,
                        help="seconds between discovery runs (default: %(default)s)")
    parser.add_argument("--min-workers", type=positive_int, default=1, help="wait for this many slots")
    parser.add_argument("--max-workers", type=positive_int, default=None, help="use at most this many")
    parser.add_argument("--root-uri", default=None,
                        help="scheduler address reachable from every host (default: loopback "
                             "when all hosts are local, else this machine's address)")
    parser.add_argument("--ssh-command", default="ssh",
                        help="ssh client and options for remote hosts (default: %(default)s)")
    parser.add_argument("--ssh-port", type=int, default=None, help="port of the remote sshd")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="worker command, after '--'")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the worker command after '--'")
    if args.hosts is not None:
        try:
            args.host_list = parse_hosts(args.hosts, source="--hosts")
        except ValueError as err:
            parser.error(str(err))
    else:
        args.host_list = [("localhost", args.num_workers)] if args.num_workers else None
    return args


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    supervisor = Supervisor(
        args.command, hosts=args.host_list,
        discovery=None if args.host_list is not None else shlex.split(args.host_discovery_script),
        num_servers=args.num_servers, checkpoint_dir=args.checkpoint_dir,
        max_restarts=args.max_restarts, restart_window=args.restart_window,
        progress_timeout=args.progress_timeout,
        start_timeout=args.start_timeout, discovery_interval=args.discovery_interval,
        min_workers=args.min_workers, max_workers=args.max_workers, root_uri=args.root_uri,
        ssh_command=shlex.split(args.ssh_command), ssh_port=args.ssh_port)

    if args.dry_run:
        print(format_plan(process_plan(world_of(supervisor.discover(), args.max_workers),
                                       args.num_gpus)))
        return 0

    return run_forwarding_signals(supervisor.run, supervisor.interrupt)


if __name__ == "__main__":
    sys.exit(main())
