"""Elastic Horovod launcher: Horovod's elastic driver, under a supervisor that relaunches it.

    python -m gluon_elastic.horovodrun -np 2 --min-np 1 --max-np 4 \\
        --host-discovery-script ./discover.sh --network-interface lo \\
        --checkpoint-dir /tmp/job --max-restarts 3 -- \\
        python scripts/train_mnist.py --backend horovod

The flags mean what ``horovodrun``'s flags of the same name mean (``-np``, ``--min-np``,
``--max-np``, ``-H``, ``--host-discovery-script``, ``--slots-per-host``, ``--network-interface``,
``--blacklist-cooldown-range``, ``--elastic-timeout``); Gloo is always the controller.
``--discovery-interval`` sets how often the discovery script runs (default 0.2 s, where
``horovodrun`` runs it about once a second). The worker
script is an ordinary elastic one (:func:`gluon_elastic.run.run` around an
:class:`gluon_elastic.state.ElasticState`); plain ``horovodrun`` still runs it, with in-place
elasticity only.

Contract
--------
Two processes of this module run the job:

* **The driver** (one per generation) is Horovod 0.28.1's own elastic runner: its
  ``ElasticDriver``, rendezvous server, host discovery, worker notifications and process
  launching, put together as ``horovodrun`` does, with these additions in :class:`ElasticDriver`
  and its rendezvous handler:

  - a question a worker can ask without registering in the current rendezvous round, "does my
    slot have a rank in the next world?" (:data:`NEXT_ASSIGNMENT_SCOPE`), answered from the
    hosts the driver knows now. Horovod's own question (``rank_and_size``) registers the worker,
    and Horovod's re-initialisation asks it again, so a worker that asked early is counted twice
    and a world that adds a worker while removing another never completes its round (the joiner
    times out and the job goes on smaller). With this question only a removed worker registers
    early (see :mod:`gluon_elastic.run`);
  - **joiners start before the survivors are told**: when discovery only adds slots, the driver
    starts their workers at once and tells the survivors only when every new worker has
    reported its start-up done (imports, model build, data: everything before it creates its
    Horovod backend; at most :attr:`ElasticDriver.prepare_timeout` seconds). The survivors
    keep training meanwhile, then pause for the re-rendezvous and the state transfer alone.
    The new worker waits for the new world to be formed before its ``hvd.init()``
    (:func:`gluon_elastic.run.join_when_let_in`);
  - host discovery every ``--discovery-interval`` seconds, the script run as a plain child
    process (Horovod runs it through a freshly spawned Python middleman, 0.26 s and 0.13 s of
    CPU per run here; a child of the driver's session dies with that session anyway);
  - when the next world would hold no host of the previous one (the previous world's hosts left
    the discovery list while the others died), Horovod's driver cannot broadcast the state and
    ends the job with an error; this driver tells the previous world's workers that they have no
    rank (they leave with exit code 0) and ends with :data:`EXIT_NO_SURVIVOR`, for the
    supervisor.

* **The supervisor** (the command you run) starts the driver in a session of its own, with
  ``GLUON_ELASTIC_CHECKPOINT_DIR`` (``--checkpoint-dir``, a temporary directory removed at the end
  when not given) and ``GLUON_ELASTIC_GENERATION``. The workers' rank 0 writes every commit there
  (:class:`gluon_elastic.checkpoint.CheckpointManager`: atomic, checksummed). When the driver
  exits non-zero (killed, no survivor, workers failed), the supervisor kills every process of
  that generation (its session, and every process that carries its generation token in the
  environment), writes one line naming the cause and the checkpoint it resumes from, and starts a
  new driver on the hosts listed at that moment (``-np`` becomes ``--min-np``); rank 0 of the new
  world loads the newest checkpoint before the first sync, so the work lost is at most the steps
  since the last commit. After ``--max-restarts`` relaunches it gives up and returns the driver's
  exit code. SIGINT and SIGTERM stop the job.

Process ends: the supervisor's exit code is 0 when the job finished, else the last driver's
(128 + N for a driver killed by signal N). No process of the job outlives the supervisor on this
machine; remote workers die with their ``ssh`` session (Horovod's launching).
"""
import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from horovod.runner.common.util import hosts as hvd_hosts
from horovod.runner.elastic.discovery import HostDiscoveryScript
from horovod.runner.elastic.driver import ElasticDriver as HorovodElasticDriver
from horovod.runner.elastic.worker import HostUpdateResult

from .flags import positive_float, positive_int
from .launch import (RestartBudget, add_plan_args, add_restart_args, format_plan, process_plan,
                     processes_with_env, run_forwarding_signals)
from .restart import ENV, JOIN_SCOPE, NEXT_ASSIGNMENT_SCOPE, PREPARED_SCOPE

__all__ = ["NEXT_ASSIGNMENT_SCOPE", "EXIT_NO_SURVIVOR", "DISCOVERY_INTERVAL", "ElasticDriver",
           "DiscoveryScript", "rendezvous_handler",
           "run_driver", "Supervisor", "driver_command", "processes_with_env",
           "local_host_names", "main"]

# Rendezvous-store scope of the non-registering question (GET /next_assignment/<host>:<slot>).
# Driver exit code: the next world would hold no worker of the previous one (EX_TEMPFAIL).
EXIT_NO_SURVIVOR = 75
# Seconds the workers of a world without survivor get to leave before the driver stops.
NO_SURVIVOR_GRACE_SECONDS = 10.0
# Environment variable carrying the token of a driver generation, inherited by its workers.
TOKEN_ENV = "GLUON_ELASTIC_JOB_TOKEN"
# Default seconds between two runs of the discovery script: a change is seen within this plus the
# script's own run time (0.05 s for scripts/discovery.py here).
DISCOVERY_INTERVAL = 0.2
# Longest a discovery script may run before the driver counts the run as failed.
DISCOVERY_SCRIPT_TIMEOUT = 60.0

def _note(text):
    """One line of the launcher's own, flushed at once (the tests read it as it comes)."""
    sys.stdout.write("[gluon_elastic.horovodrun] %s\n" % text)
    sys.stdout.flush()


# ------------------------------------------------------------------------------------ driver
class DiscoveryScript(HostDiscoveryScript):
    """Horovod's script discovery, running the script as a plain child process.

    Horovod's runs it through ``safe_shell_exec``, which spawns a Python middleman process per
    run (0.26 s of wall time, 0.13 s of CPU here), too slow to poll several times a second. The
    middleman's job, killing the script if the driver dies, is done here by the supervisor,
    which kills the driver's whole session.
    """

    def _execute_discovery_script(self):
        result = subprocess.run(self._discovery_script, shell=True, capture_output=True,
                                text=True, timeout=DISCOVERY_SCRIPT_TIMEOUT, check=False)
        if result.returncode != 0:
            raise RuntimeError("Failed to execute discovery script: %s. Exit code: %d"
                               % (self._discovery_script, result.returncode))
        return result.stdout


class ElasticDriver(HorovodElasticDriver):
    """Horovod's elastic driver with a non-registering rank question and a no-survivor report.

    Same arguments as ``horovod.runner.elastic.driver.ElasticDriver``, and ``discovery_interval``
    (seconds between two discovery runs; Horovod's is 1 s).

    Attributes
    ----------
    no_survivor : str or None
        Why the next world could not be formed from the previous one, once that happened.
    stale_assignment_seconds : float
        How long the world may differ from the one the listed hosts form before the change is
        announced again (a round of re-initialisation takes well under that).
    prepare_timeout : float
        Longest the survivors are kept training while joiners start; past it they are told
        anyway (a joiner still starting then is waited for in the re-rendezvous, as Horovod does).
    """

    stale_assignment_seconds = 3.0
    prepare_timeout = 120.0

    def __init__(self, *args, discovery_interval=DISCOVERY_INTERVAL, **kwargs):
        # Read by the discovery thread, which Horovod's constructor starts.
        self.discovery_interval = discovery_interval
        # (host, local rank) -> {"state": "waiting"|"go"|"dropped", "ready": bool, "since": t,
        # "slot": the SlotInfo it was started with} of workers started ahead of a growth; the
        # update kinds not announced yet.
        self.prepared = {}
        self._deferred_update = 0
        self._deferred_since = None
        super().__init__(*args, **kwargs)
        self.no_survivor = None
        self.stop_timer = None
        self._watcher = threading.Thread(target=self._renotify_stale_assignments,
                                         name="gluon_elastic-assignment-watcher", daemon=True)
        self._watcher.start()

    def _discover_hosts(self):
        """Horovod's discovery loop, every :attr:`discovery_interval` seconds.

        As Horovod's: a failure of the first run ends the job (a misconfiguration), later ones
        are logged and retried.
        """
        # pylint: disable=import-outside-toplevel
        from horovod.runner.elastic.worker import HostUpdateResult as Update

        first_update = True
        while not self._shutdown.is_set():
            with self._wait_hosts_cond:
                try:
                    update = self._host_manager.update_available_hosts()
                    if update != Update.no_update:
                        self._announce(self._host_manager.current_hosts, update)
                        self._wait_hosts_cond.notify_all()
                    elif self._deferred_update and time.monotonic() - self._deferred_since \
                            > self.prepare_timeout:
                        self._announce_deferred()
                except BaseException as err:  # pylint: disable=broad-except
                    if first_update:
                        self._shutdown.set()
                        self._wait_hosts_cond.notify_all()
                        raise
                    logging.warning(str(err))
            first_update = False
            self._shutdown.wait(self.discovery_interval)

    # ------------------------------------------------------------ joiners started ahead
    def _announce(self, current, update):
        """Tell the survivors about a change, or first start the joiners of a pure growth.

        Called with ``_wait_hosts_cond`` held.
        """
        if update == HostUpdateResult.added and self._host_assignments \
                and self._create_worker_fn is not None \
                and current.count_available_slots() >= self._min_num_proc:
            active = {(s.hostname, s.local_rank) for v in self._host_assignments.values()
                      for s in v}
            upcoming = [s for v in self._get_host_assignments(current)[0].values() for s in v
                        if (s.hostname, s.local_rank) not in active]
            for slot in upcoming:
                key = (slot.hostname, slot.local_rank)
                if key not in self.prepared or self.prepared[key]["state"] != "waiting":
                    self.prepared[key] = {"state": "waiting", "ready": False,
                                          "since": time.monotonic(), "slot": slot}
                    self._start_worker_process(slot)
            if upcoming:
                if not self._deferred_update:
                    self._deferred_since = time.monotonic()
                self._deferred_update |= update
                if not self._all_prepared_ready():
                    return
        self._deferred_update |= update
        self._announce_deferred()

    def _all_prepared_ready(self):
        return all(entry["ready"] for entry in self.prepared.values()
                   if entry["state"] == "waiting")

    def _announce_deferred(self):
        """Notify the workers of the changes held back so far (``_wait_hosts_cond`` held)."""
        update, self._deferred_update = self._deferred_update, 0
        if update:
            self._notify_workers_host_changes(self._host_manager.current_hosts, update)

    def prepared_state(self, host, slot):
        """``"prepared"`` if the worker of ``host[slot]`` was started ahead of a growth."""
        with self._wait_hosts_cond:
            return "prepared" if (host, slot) in self.prepared else "no"

    def prepared_ready(self, host, slot):
        """A worker started ahead reports its start-up done; the last one lets the change out."""
        with self._wait_hosts_cond:
            entry = self.prepared.get((host, slot))
            if entry is None or entry["state"] != "waiting":
                return
            entry["ready"] = True
            if self._deferred_update and self._all_prepared_ready():
                self._announce_deferred()

    def join_answer(self, host, slot):
        """``"wait"``, or the slot's assignment in the world formed since (rank -1: dropped)."""
        with self._wait_hosts_cond:
            entry = self.prepared.get((host, slot))
            if entry is None or entry["state"] == "dropped":
                return hvd_hosts.INVALID_SLOT_INFO.to_response_string()
            if entry["state"] == "waiting":
                return "wait"
            return self.get_slot_info(host, slot).to_response_string()

    def _start_worker_processes(self, pending_slots):
        """Start the new world's workers, except those started ahead: let those in instead."""
        with self._wait_hosts_cond:
            pending = {(s.hostname, s.local_rank) for s in pending_slots}
            letting_in = set()
            for key, entry in list(self.prepared.items()):
                if entry["state"] == "waiting":
                    entry["state"] = "go" if key in pending else "dropped"
                    if key in pending:
                        letting_in.add(key)
                elif key in pending:
                    # The answer of an earlier growth: this slot's new worker starts the usual
                    # way and is not one started ahead.
                    del self.prepared[key]
            fresh = [s for s in pending_slots if (s.hostname, s.local_rank) not in letting_in]
        super()._start_worker_processes(fresh)

    def stop(self, error_message=None):
        """Stop the job; workers started ahead and never let in are told to leave first.

        They leave with exit code 0 once their start-up is done (at most ``prepare_timeout``
        seconds are waited for), rather than being terminated in the middle of it.
        """
        with self._wait_hosts_cond:
            leaving = [entry for entry in self.prepared.values() if entry["state"] == "waiting"]
            for entry in leaving:
                entry["state"] = "dropped"
        deadline = time.monotonic() + self.prepare_timeout
        while any(not entry.get("exited") for entry in leaving) and time.monotonic() < deadline:
            time.sleep(0.05)
        super().stop(error_message)

    def _handle_worker_exit(self, slot_info, exit_code, timestamp):
        key = (slot_info.hostname, slot_info.local_rank)
        with self._wait_hosts_cond:
            entry = self.prepared.get(key)
            if entry is not None and entry["slot"] is slot_info:
                entry["exited"] = True
            # The exit of this very worker (the slot's previous worker may end only now).
            if entry is not None and entry["state"] == "waiting" and entry["slot"] is slot_info:
                # Died during its start-up: the growth goes on without it (the next world
                # starts a worker there the usual way).
                del self.prepared[key]
                if self._deferred_update and self._all_prepared_ready():
                    self._announce_deferred()
                return
        super()._handle_worker_exit(slot_info, exit_code, timestamp)

    def _renotify_stale_assignments(self):
        """Announce a host change again when the world still differs from the hosts listed.

        Horovod notifies the workers once per discovery change, and a notification can be lost:
        Horovod's ``State.on_reset`` empties the queue of a worker that is re-initialising (a
        host coming back from its blacklist cool-down while the others wait for a joiner), and
        two notifications within one second carry the same timestamp, so the second is ignored.
        The job would then run short of the listed hosts until discovery changes again. This
        thread compares the current world with the one the listed hosts would form, and when
        they have differed for :attr:`stale_assignment_seconds` it notifies the workers again.
        """
        stale_since = None
        while not self._shutdown.wait(1.0):
            with self._wait_hosts_cond:
                current = self._host_manager.current_hosts
                if self._deferred_update:  # joiners are starting: the change is held back
                    stale_since = None
                    continue
                if not self._host_assignments \
                        or current.count_available_slots() < self._min_num_proc:
                    stale_since = None
                    continue
                next_assignments = self._get_host_assignments(current)[0]
                if next_assignments == self.host_assignments:
                    stale_since = None
                    continue
                now = time.monotonic()
                if stale_since is None:
                    stale_since = now
                elif now - stale_since >= self.stale_assignment_seconds:
                    slots = {(s.hostname, s.local_rank) for v in self.host_assignments.values()
                             for s in v}
                    wanted = {(s.hostname, s.local_rank) for v in next_assignments.values()
                              for s in v}
                    update = (HostUpdateResult.removed if slots - wanted else 0) \
                        | (HostUpdateResult.added if wanted - slots else 0)
                    self._notify_workers_host_changes(current, update)
                    stale_since = now

    def next_slot_info(self, host, slot):
        """Slot info of ``host[slot]`` in the world the hosts known now would form.

        Registers nothing: the current rendezvous round is left as it is.
        """
        with self._wait_hosts_cond:
            current = self._host_manager.current_hosts
            if self._host_manager.is_blacklisted(host) \
                    or host not in current.host_assignment_order:
                return hvd_hosts.INVALID_SLOT_INFO
            if current.count_available_slots() < self._min_num_proc:
                # The round will wait for more slots; this host stays listed.
                return self.get_slot_info(host, slot)
            assignments, _ = self._get_host_assignments(current)
        if len(assignments.get(host, ())) > slot:
            return assignments[host][slot]
        return hvd_hosts.INVALID_SLOT_INFO

    def resume(self):
        """Form the next world, or end the generation when none of its hosts was in the last.

        Runs when every worker of the current world has registered. Horovod's driver would raise
        inside its registry and stop; here the previous world's workers are told they have no
        rank (they leave with exit code 0) and the driver stops with ``no_survivor`` set.
        """
        with self._wait_hosts_cond:
            current = self._host_manager.current_hosts
            enough = current.count_available_slots() >= self._min_num_proc
            next_assignments = self._get_host_assignments(current)[0] if enough else None
        if next_assignments is not None and self._host_assignments \
                and not set(self._host_assignments) & set(next_assignments):
            self.no_survivor = ("no worker of the previous world survives (its hosts %s, listed "
                                "now %s)" % (",".join(sorted(self._host_assignments)),
                                             ",".join(sorted(next_assignments))))
            self._host_assignments = {}
            self._rank_assignments = {}
            # The workers leave on their own once answered; stopping now would terminate them
            # before they read the answer. run_driver stops the driver when they are gone, this
            # timer if one of them hangs.
            self.stop_timer = threading.Timer(NO_SURVIVOR_GRACE_SECONDS, self.stop)
            self.stop_timer.daemon = True
            self.stop_timer.start()
            return
        super().resume()


def rendezvous_handler(driver):
    """Horovod's elastic rendezvous handler, also answering :data:`NEXT_ASSIGNMENT_SCOPE`."""
    from horovod.runner.elastic.rendezvous import create_rendezvous_handler

    base = create_rendezvous_handler(driver)

    class Handler(base):
        def _get_value(self, scope, key):
            if scope in (NEXT_ASSIGNMENT_SCOPE, PREPARED_SCOPE, JOIN_SCOPE):
                host, local_rank = key.split(":")
                if scope == NEXT_ASSIGNMENT_SCOPE:
                    answer = driver.next_slot_info(host, int(local_rank)).to_response_string()
                elif scope == PREPARED_SCOPE:
                    answer = driver.prepared_state(host, int(local_rank))
                else:
                    answer = driver.join_answer(host, int(local_rank))
                return answer.encode("ascii")
            return super()._get_value(scope, key)

        def _put_value(self, scope, key, value):
            if scope == PREPARED_SCOPE:
                host, local_rank = key.split(":")
                driver.prepared_ready(host, int(local_rank))
                return
            super()._put_value(scope, key, value)

    return Handler


def run_driver(args):
    """Run one generation of the job with Horovod's elastic runner; returns the exit code."""
    from horovod.runner import gloo_run
    from horovod.runner.common.util import secret
    from horovod.runner.common.util import timeout as hvd_timeout
    from horovod.runner.driver import driver_service
    from horovod.runner.elastic import discovery
    from horovod.runner.elastic.settings import ElasticSettings
    from horovod.runner.http.http_server import RendezvousServer
    from horovod.runner.util import network

    if args.host_discovery_script:
        host_discovery = DiscoveryScript(args.host_discovery_script, args.slots_per_host)
    else:
        host_discovery = discovery.FixedHosts(hvd_hosts.parse_hosts_and_slots(args.hosts)[1])
    min_np = args.min_np or args.np
    nics = set(args.network_interface.split(",")) if args.network_interface else None
    settings = ElasticSettings(
        discovery=host_discovery, min_num_proc=min_np, max_num_proc=args.max_np,
        elastic_timeout=args.elastic_timeout, reset_limit=None,
        cooldown_range=args.blacklist_cooldown_range, num_proc=args.np,
        verbose=2 if args.verbose else 0, key=secret.make_secret_key(),
        start_timeout=hvd_timeout.Timeout(args.start_timeout,
                                          message="Timed out waiting for {activity}."),
        nics=nics, run_func_mode=False, output_filename=None,
        prefix_output_with_timestamp=False)
    rendezvous = RendezvousServer(settings.verbose)
    driver = ElasticDriver(rendezvous, host_discovery, min_np, args.max_np,
                           timeout=args.elastic_timeout,
                           cooldown_range=args.blacklist_cooldown_range,
                           verbose=settings.verbose,
                           discovery_interval=args.discovery_interval)
    port = rendezvous.start(rendezvous_handler(driver))
    # Without --network-interface the interfaces are tested between two hosts, as horovodrun does.
    current = driver.wait_for_available_slots(args.np, min_hosts=1 if nics else 2)
    common_nics = driver_service.get_common_interfaces(settings, current.host_assignment_order)
    server_ip = network.get_driver_ip(common_nics)
    event = gloo_run.register_shutdown_event()
    run_command = gloo_run.get_run_command(args.command, server_ip, common_nics, port,
                                           elastic=True)
    # pylint: disable-next=protected-access
    create_worker = gloo_run._create_elastic_worker_fn(gloo_run._exec_command_fn(settings),
                                                       run_command, os.environ.copy(), event)
    driver.start(args.np, create_worker)
    results = driver.get_results()
    if driver.stop_timer is not None:
        driver.stop_timer.cancel()
    driver.stop()
    if driver.no_survivor:
        _note("driver: %s" % driver.no_survivor)
        return EXIT_NO_SURVIVOR
    if results.error_message is not None:
        _note("driver: %s" % results.error_message)
        return 1
    for name, (code, _) in sorted(results.worker_results.items(), key=lambda item: item[1][1]):
        if code != 0:
            _note("driver: worker %s exited with code %d" % (name, code))
            return 1
    return 0


# -------------------------------------------------------------------------------- supervisor
def local_host_names():
    """Names of this machine on which Horovod starts workers locally, without ``ssh``.

    Horovod runs a worker locally when its host name resolves to an address of one of this
    machine's interfaces: ``localhost``, ``127.0.0.1``, usually the host name, and the addresses
    of the other interfaces. Listing several of them gives several one-slot "hosts" on one
    machine, which failure tests need since the driver blacklists a failed worker's whole host.

    Returns
    -------
    list of str
        In that order, without duplicates.
    """
    import socket

    import psutil
    from horovod.runner.util import network

    local = network.get_local_host_addresses()
    candidates = ["localhost", "127.0.0.1", socket.gethostname()]
    for addrs in psutil.net_if_addrs().values():
        candidates.extend(a.address for a in addrs if a.family == socket.AF_INET)
    names = []
    for name in candidates:
        try:
            address = network.resolve_host_address(name)
        except OSError:
            continue
        if name not in names and address in local:
            names.append(name)
    return names


class Supervisor:
    """Run drivers until the job finishes, relaunching from the last durable checkpoint.

    Parameters
    ----------
    driver_command : callable
        ``driver_command(np)`` is the command line of a driver generation that starts ``np``
        workers (:func:`driver_command`).
    np, min_np : int
        ``-np`` of the first generation; relaunches start with ``min_np``.
    checkpoint_dir : str
        Durable commits of the workers' rank 0.
    max_restarts : int
        Relaunches allowed within ``restart_window``; one more in the window ends the job.
    restart_window : float
        Seconds over which relaunches are counted (a sliding window), so a long job on spot
        capacity is not ended by failures spread over days.
    """

    def __init__(self, driver_command, np, min_np, checkpoint_dir, max_restarts,
                 restart_window=3600.0):
        self.driver_command = driver_command
        self.np = np
        self.min_np = min_np
        self.checkpoint_dir = checkpoint_dir
        self.budget = RestartBudget(max_restarts, restart_window)
        self.token = uuid.uuid4().hex
        self.generation = 0
        self.restarts = 0
        self.proc = None
        self.stop_signal = None

    def _last_checkpoint(self):
        from .checkpoint import CheckpointManager  # lists files; imports no MXNet

        manager = CheckpointManager(self.checkpoint_dir)
        steps = manager.steps()
        return manager.path(steps[-1]) if steps else "no checkpoint yet (from the start)"

    def _start(self):
        env = dict(os.environ)
        env[ENV["checkpoint_dir"]] = self.checkpoint_dir
        env[ENV["generation"]] = str(self.generation)
        env[TOKEN_ENV] = "%s-%d" % (self.token, self.generation)
        np = self.np if self.generation == 0 else self.min_np
        self.proc = subprocess.Popen(self.driver_command(np), env=env, start_new_session=True)
        return self.proc

    def kill_generation(self):
        """SIGKILL the driver's session and every process carrying this generation's token."""
        token = "%s-%d" % (self.token, self.generation)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(3):  # a process may fork while we kill
            pids = processes_with_env(TOKEN_ENV, token)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.wait()

    def interrupt(self, signum):
        """Stop the job (from a signal handler): the driver gets the signal, then is killed."""
        self.stop_signal = signum
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    @staticmethod
    def describe(code):
        """Why a driver that exited with ``code`` ended, in words."""
        if code < 0:
            return "the driver was killed by signal %d" % -code
        if code == EXIT_NO_SURVIVOR:
            return "no worker of the previous world survives"
        return "the driver exited with code %d (workers failed)" % code

    def run(self):
        """Run the job to its end; returns the exit code (see the module docstring)."""
        while True:
            self._start()
            while True:
                try:
                    code = self.proc.wait()
                    break
                except KeyboardInterrupt:  # SIGINT reached us too: wait for the driver's end
                    continue
            self.kill_generation()
            if self.stop_signal is not None:
                _note("stopped by signal %d" % self.stop_signal)
                return 128 + self.stop_signal
            if code == 0:
                if self.restarts:
                    _note("job finished after %d relaunch(es)" % self.restarts)
                return 0
            budget = self.budget
            if not budget.allows():
                _note("giving up: %s and the restart budget (--max-restarts %d per "
                      "--restart-window %.0f s) is used up; last checkpoint: %s"
                      % (self.describe(code), budget.max_restarts, budget.window,
                         self._last_checkpoint()))
                return code if code > 0 else 128 - code
            self.restarts += 1
            budget.record()
            self.generation += 1
            _note("%s; relaunching on the listed hosts from %s (restart %d, %d of %d allowed "
                  "per %.0f s)" % (self.describe(code), self._last_checkpoint(), self.restarts,
                                   budget.used, budget.max_restarts, budget.window))


# ---------------------------------------------------------------------------- command line
def _cooldown_range(text):
    parts = text.split(",") if "," in text else text.split()
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX seconds, got %r" % text) from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError("need 1 <= MIN <= MAX, got %r" % text)
    return low, high


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gluon_elastic.horovodrun",
        description="Run an elastic Horovod job (Gloo) whose workers join, leave and die in "
                    "place, relaunched from its last durable commit when the driver dies or no "
                    "worker of the previous world survives.")
    parser.add_argument("-np", "--num-proc", dest="np", type=positive_int, required=True,
                        help="workers to start with")
    parser.add_argument("--min-np", "--min-num-proc", dest="min_np", type=positive_int,
                        default=None, help="fewest workers to run with (default: -np)")
    parser.add_argument("--max-np", "--max-num-proc", dest="max_np", type=positive_int,
                        default=None, help="most workers to run with")
    members = parser.add_mutually_exclusive_group(required=True)
    members.add_argument("-H", "--hosts", help="fixed hosts, HOST:SLOTS[,HOST:SLOTS...]")
    members.add_argument("--host-discovery-script",
                         help="executable printing HOST[:SLOTS] lines, run every "
                              "--discovery-interval seconds")
    parser.add_argument("--discovery-interval", type=positive_float, default=DISCOVERY_INTERVAL,
                        help="seconds between two runs of the discovery script (default: "
                             "%(default)s; a change is seen within this plus the script's run "
                             "time)")
    parser.add_argument("--slots-per-host", type=positive_int, default=1,
                        help="slots of a discovered host printed without a count")
    parser.add_argument("--network-interface", default=None,
                        help="network interfaces to use, comma-separated (e.g. lo on one machine)")
    parser.add_argument("--blacklist-cooldown-range", type=_cooldown_range, default=None,
                        metavar="MIN,MAX",
                        help="seconds after which a host that failed may be used again "
                             "(doubling from MIN up to MAX); default: never")
    parser.add_argument("--elastic-timeout", type=positive_int, default=600,
                        help="seconds to wait for --min-np slots (default: %(default)s)")
    parser.add_argument("--start-timeout", type=positive_int, default=30,
                        help="seconds for the driver's start-up checks (default: %(default)s)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="durable commits of the job, shared by the hosts; a job started on "
                             "a directory that holds some resumes from the newest (default: a "
                             "temporary directory removed at the end)")
    add_restart_args(parser, "relaunches after the driver died or no worker survived")
    add_plan_args(parser)
    parser.add_argument("--verbose", action="store_true", help="Horovod's driver logs")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="worker command, after '--'")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the worker command after '--'")
    min_np = args.min_np or args.np
    if min_np > args.np or (args.max_np is not None and args.max_np < args.np):
        parser.error("need --min-np <= -np <= --max-np")
    if args.hosts is not None:
        from horovod.runner.common.util import hosts as hvd_hosts

        try:
            hvd_hosts.parse_hosts_and_slots(args.hosts)
        except ValueError as err:
            parser.error(str(err))
    return args


def dry_run_plan(args):
    """The process plan of the first world: ``-np`` slots of the listed hosts, in their order.

    Horovod gives ranks host by host in the order of the host list, and each worker drives the
    ``--num-gpus`` GPUs of its ``local_rank`` (``hvd.local_rank()``; :mod:`gluon_elastic.devices`).
    """
    if args.hosts is not None:
        listed = [_host_slots(item, args.slots_per_host) for item in args.hosts.split(",")]
    else:
        output = subprocess.run([args.host_discovery_script], capture_output=True, text=True,
                                check=True, timeout=60).stdout
        listed = [_host_slots(line.strip(), args.slots_per_host)
                  for line in output.splitlines() if line.strip()]
    slot_hosts = [host for host, slots in listed for _ in range(slots)]
    return process_plan(slot_hosts[:args.np], args.num_gpus)


def _host_slots(item, default_slots):
    host, _, slots = item.partition(":")
    return host, int(slots) if slots else default_slots


def driver_command(args, np):
    """Command line of one driver generation of the job parsed into ``args``, starting ``np``."""
    argv = [sys.executable, "-m", "gluon_elastic.horovodrun", "--driver", "-np", str(np),
            "--slots-per-host", str(args.slots_per_host),
            "--elastic-timeout", str(args.elastic_timeout),
            "--start-timeout", str(args.start_timeout),
            "--discovery-interval", repr(args.discovery_interval)]
    if args.min_np is not None:
        argv += ["--min-np", str(args.min_np)]
    if args.max_np is not None:
        argv += ["--max-np", str(args.max_np)]
    if args.hosts is not None:
        argv += ["-H", args.hosts]
    else:
        argv += ["--host-discovery-script", args.host_discovery_script]
    if args.network_interface:
        argv += ["--network-interface", args.network_interface]
    if args.blacklist_cooldown_range:
        argv += ["--blacklist-cooldown-range", "%d,%d" % args.blacklist_cooldown_range]
    if args.verbose:
        argv.append("--verbose")
    return argv + ["--"] + list(args.command)


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    if args.driver:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
        return run_driver(args)
    if args.dry_run:
        print(format_plan(dry_run_plan(args)))
        return 0
    checkpoint_dir = args.checkpoint_dir
    temporary = checkpoint_dir is None
    if temporary:
        checkpoint_dir = tempfile.mkdtemp(prefix="gluon_elastic_horovodrun-")
    checkpoint_dir = os.path.abspath(checkpoint_dir)
    os.makedirs(checkpoint_dir, exist_ok=True)
    supervisor = Supervisor(lambda np: driver_command(args, np), args.np,
                            args.min_np or args.np, checkpoint_dir, args.max_restarts,
                            args.restart_window)

    try:
        return run_forwarding_signals(supervisor.run, supervisor.interrupt)
    finally:
        if temporary:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
