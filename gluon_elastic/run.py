"""The elastic run loop: ``@gluon_elastic.run.run`` around a training function.

    state = ElasticState(net, trainer, sampler, epoch=0)

    @gluon_elastic.run.run
    def fit(state):
        while state.epoch < num_epochs:
            sampler.set_epoch(state.epoch)
            for indices, global_batch_size in sampler.iter_batches(
                    trainer.batch_policy.local_batch_sizes(trainer.world_size), trainer.rank):
                if len(indices):   # a rank may have no samples at the tail of an epoch
                    ...  # forward/backward on dataset[indices]
                trainer.step(len(indices), global_batch_size=global_batch_size)
                sampler.record(global_batch_size)
                if trainer.iteration % commit_interval == 0:
                    state.commit()
                else:
                    state.check_host_updates()
            state.epoch += 1
            state.commit()

    fit(state)   # under horovodrun --host-discovery-script ... --network-interface lo

Contract
--------
``run(func)`` returns ``wrapper(state, *args, **kwargs)``. Under Horovod's elastic driver
(``horovodrun --host-discovery-script ...``, backend ``horovod``) the wrapper loops:

1. ``state.sync()``, then ``func(state)``. The sync also runs after a change that only removed
   workers: state outside the gradients (BatchNorm running statistics) drifts apart between
   ranks, and every reset starts from rank 0's;
2. a failed collective (a worker died) raises ``HorovodInternalError``: the state is restored to
   its last commit, Horovod is re-initialised on the surviving world, and ``func`` runs again;
3. a membership change announced by the driver raises ``HostsUpdatedInterrupt`` at a commit or
   ``state.check_host_updates()``: no rollback, Horovod is re-initialised, and ``func`` runs again;
4. when ``func`` returns, every rank meets at a barrier, then Horovod shuts down, in that order,
   so no rank leaves while another is still inside a collective (``commit`` included).

What MXNet needs around Horovod, handled here:

- Horovod's failures surface from MXNet's asynchronous engine as ``mxnet.base.MXNetError``; the
  wrapper translates those into ``HorovodInternalError`` so the loop sees them.
- MXNet's engine is flushed (``mx.nd.waitall()``) before a reset and before the exit, so no
  Horovod op is left in flight when Horovod shuts down.
- **A failure reaches every survivor at once.** Only the peers of a dead worker get a connection
  reset; a survivor blocked in a receive from another survivor would wait for
  ``HOROVOD_GLOO_TIMEOUT_SECONDS``. A worker that sees a collective fail therefore shuts down its
  own Gloo connections first (:meth:`gluon_elastic.backends.horovod.HorovodBackend.break_connections`),
  so its peers fail at once and do the same: every survivor resets within a fraction of a second,
  while a worker that is only slow (stopped, swapping) is still waited for, up to the Gloo timeout.
- **A removed worker leaves with exit code 0** instead of aborting: Horovod's re-initialisation
  throws in a C++ thread when its slot has no rank any more (exit 134). Under
  :mod:`gluon_elastic.horovodrun` each worker first asks the driver whether its slot has a rank
  in the next world, a question that does *not* register it in the driver's rendezvous round
  (:func:`ask_next_assignment`). A kept worker registers exactly once, in Horovod's own
  re-initialisation; a removed one asks Horovod's registering question
  (:func:`ask_rank_and_size`), which returns once the round is complete, and leaves with exit
  code 0, which the driver ignores for slots it no longer assigns. Registering every worker only
  once is what lets a change that adds and removes at once (a replacement) end at the listed
  world size. Plain ``horovodrun`` cannot answer the non-registering question: there a worker
  asks the registering one after a change announced as removing slots, and a change that adds
  and removes at once must be announced as two changes.
- **A joiner started ahead of a growth** (under :mod:`gluon_elastic.horovodrun`, when discovery
  only adds slots) reports its start-up done when the wrapper starts (it joins its world there,
  :meth:`gluon_elastic.backends.HorovodBackend.join`: everything it built before, trainer,
  state and data, is part of its start-up) and waits until the survivors, told only then, have
  formed the new world (:func:`join_when_let_in`); the survivors train on while it starts. If the job ends first, it
  is told it has no rank and leaves with exit code 0.
- **Durable commits.** With ``GLUON_ELASTIC_CHECKPOINT_DIR`` set (the launcher sets it), rank 0
  writes commits to a :class:`gluon_elastic.checkpoint.CheckpointManager`, serialised and
  written in a background thread from the commit's host buffers
  (:meth:`gluon_elastic.state.ElasticState.committed_state`), and rank 0 of a fresh launch loads
  the newest one before its first sync: a relaunch after the driver died or after no worker of
  the previous world survived loses only the steps since the last durable commit. Which commits
  are written follows the state's :class:`gluon_elastic.state.CommitPolicy`: a commit is written
  when the CPU time of the last write is within half of its ``max_overhead`` of the time since
  that write started, and never while it is still going (no step or time cap: a durable write
  of a large model costs tens of commits, and it only matters when the driver or every worker
  of a world is lost); with ``max_overhead=None`` every commit is written (the next one waits
  for the previous write). The last commit of a job that finishes is always written. A write
  under way goes on through a reset; only a rank 0 that leaves the job waits for it, before
  the next world can form.

On backends that are not elastic in place (KVStore: restart elasticity), on the local backend
and under plain ``horovodrun -np N``, the wrapper syncs once and calls ``func(state)`` once.
"""
import functools
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request

import mxnet as mx

from .checkpoint import CheckpointManager
from .restart import ENV, JOIN_SCOPE, NEXT_ASSIGNMENT_SCOPE, PREPARED_SCOPE
from .state import HOSTS_REMOVED, CommitPolicy

__all__ = ["run", "HorovodInternalError", "HostsUpdatedInterrupt", "is_horovod_error",
           "ask_rank_and_size", "ask_next_assignment", "join_when_let_in"]

# Seconds between two questions of a worker waiting to be let into the next world.
JOIN_POLL_SECONDS = 0.02

logger = logging.getLogger("gluon_elastic")

try:
    from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt
except ImportError:  # Horovod is optional; these classes keep the loop's except clauses valid.
    class HorovodInternalError(RuntimeError):
        """A collective failed (stand-in when Horovod is not installed)."""

    class HostsUpdatedInterrupt(RuntimeError):
        """Membership changed (stand-in when Horovod is not installed)."""

        def __init__(self, skip_sync=False):
            super().__init__(skip_sync)
            self.skip_sync = skip_sync

# Text of the errors Horovod's ops raise through MXNet when a peer has gone.
_HOROVOD_ERROR_MARKERS = ("horovod", "gloo", "connection closed by peer", "connection reset")


def is_horovod_error(err):
    """Whether an ``MXNetError`` was caused by a failed Horovod collective."""
    text = str(err).lower()
    return any(marker in text for marker in _HOROVOD_ERROR_MARKERS)


def _translated(call, *args, **kwargs):
    """Run ``call``; a Horovod failure surfacing as ``MXNetError`` becomes ``HorovodInternalError``."""
    try:
        return call(*args, **kwargs)
    except mx.base.MXNetError as err:
        if is_horovod_error(err):
            # The line that names the failure (some messages open with a stack trace).
            lines = str(err).strip().splitlines()
            named = [line for line in lines if is_horovod_error(line)]
            raise HorovodInternalError((named or lines)[0].strip()) from err
        raise


def _flush():
    """Wait for MXNet's engine; errors of ops that failed with the old world are dropped."""
    try:
        mx.nd.waitall()
    except mx.base.MXNetError as err:
        if not is_horovod_error(err):
            raise


def _rendezvous_url(scope):
    addr = os.environ["HOROVOD_GLOO_RENDEZVOUS_ADDR"]
    port = os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"]
    key = "%s:%s" % (os.environ["HOROVOD_HOSTNAME"], os.environ["HOROVOD_LOCAL_RANK"])
    return "http://%s:%s/%s/%s" % (addr, port, scope, key)


def _parse_slot_answer(text, url):
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 6:
        raise RuntimeError("unexpected rendezvous answer %r from %s" % (values, url))
    return values


def ask_rank_and_size(timeout=600.0):
    """Ask the elastic driver's rendezvous store for this slot's rank in the next world.

    The question registers the slot in the driver's rendezvous round and blocks until every
    worker of the current world has registered (the driver's barrier), as Horovod's own
    re-initialisation does.

    Returns
    -------
    tuple of int
        ``(rank, size, local_rank, local_size, cross_rank, cross_size)``; rank -1 means this slot
        has been removed from the job.
    """
    url = _rendezvous_url("rank_and_size")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return _parse_slot_answer(response.read().decode("ascii"), url)


def ask_next_assignment(timeout=30.0):
    """Whether this slot has a rank in the world the driver forms next; registers nothing.

    Answered by :mod:`gluon_elastic.horovodrun`'s driver from the hosts it knows now (discovery
    and blacklist), before the rendezvous round completes.

    Returns
    -------
    bool or None
        None when the driver does not answer this question (plain ``horovodrun``).
    """
    url = _rendezvous_url(NEXT_ASSIGNMENT_SCOPE)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return _parse_slot_answer(response.read().decode("ascii"), url)[0] >= 0
    except urllib.error.HTTPError as err:
        if err.code == 404:  # Horovod's own store: an unknown scope holds no value
            return None
        raise


def join_when_let_in(timeout=3600.0):
    """Before a worker's first ``hvd.init()``: if the driver started it ahead of a growth, report
    its start-up done and wait until the survivors have formed the new world.

    Under :mod:`gluon_elastic.horovodrun` a worker added by discovery starts while the others
    keep training (see the launcher's docstring). Its environment carries the slot it was given
    when it was started; the world formed when the survivors are told may differ (another change
    came meanwhile), so the environment is updated from the driver's answer before Horovod reads
    it. A slot dropped meanwhile leaves with exit code 0.

    Returns
    -------
    bool
        True when this worker was started ahead and is now let in; False otherwise (a worker of
        the first world, a worker started the usual way, or a driver that does not answer).
    """
    url = _rendezvous_url(PREPARED_SCOPE)
    try:
        with urllib.request.urlopen(url, timeout=30.0) as response:
            prepared = response.read().decode("ascii") == "prepared"
    except urllib.error.HTTPError as err:
        if err.code == 404:  # Horovod's own store: no such question
            return False
        raise
    if not prepared:
        return False
    # Not part of any world yet: if the job ends meanwhile (the driver stops its workers with
    # SIGTERM), there is nothing to lose and this worker leaves quietly.
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # pylint: disable=protected-access
    except ValueError:  # not the main thread
        previous = None
    request = urllib.request.Request(url, data=b"ready", method="PUT")
    with urllib.request.urlopen(request, timeout=30.0):
        pass
    join_url = _rendezvous_url(JOIN_SCOPE)
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(join_url, timeout=30.0) as response:
            answer = response.read().decode("ascii")
        if answer != "wait":
            break
        if time.monotonic() > deadline:
            raise RuntimeError("not let into the job within %.0f s of the start-up" % timeout)
        time.sleep(JOIN_POLL_SECONDS)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    rank, size, local_rank, local_size, cross_rank, cross_size = _parse_slot_answer(answer,
                                                                                    join_url)
    if rank < 0:
        _leave_removed()
    os.environ.update({"HOROVOD_RANK": str(rank), "HOROVOD_SIZE": str(size),
                       "HOROVOD_LOCAL_RANK": str(local_rank),
                       "HOROVOD_LOCAL_SIZE": str(local_size),
                       "HOROVOD_CROSS_RANK": str(cross_rank),
                       "HOROVOD_CROSS_SIZE": str(cross_size)})
    return True


def _leave_removed():
    """Leave the job quietly: the driver has given this slot no rank."""
    logger.info("%s[%s] is not part of the new world; leaving",
                os.environ.get("HOROVOD_HOSTNAME"), os.environ.get("HOROVOD_LOCAL_RANK"))
    for handler in logging.getLogger().handlers + logger.handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Horovod is already shut down; skipping interpreter teardown avoids its atexit hooks and
    # MXNet's engine shutdown, neither of which has anything left to do.
    os._exit(0)  # pylint: disable=protected-access


def _reset(hvd, backend, removal_announced, before_leaving=None):
    """Shut Horovod down and re-initialise it on the new world (or leave, if removed).

    ``before_leaving`` is called by a worker that may be leaving, before it registers in the
    driver's round: the next world cannot form until it returns.
    """
    _flush()
    hvd.shutdown()
    kept = ask_next_assignment()
    # Under the project's driver only a removed slot asks the registering question; under plain
    # horovodrun every worker asks it after a change announced as a removal (module docstring).
    ask_early = removal_announced if kept is None else not kept
    if ask_early:
        if before_leaving is not None:
            before_leaving()
        if ask_rank_and_size()[0] < 0:
            _leave_removed()
    backend.init()


class _DurableCommits:
    """Rank 0 writes every commit to a checkpoint directory; a fresh launch resumes from it."""

    def __init__(self, state, directory):
        self.state = state
        self.manager = CheckpointManager(directory)
        self.last = None   # (time.monotonic(), iteration) of the last write started
        self.written = 0
        self.skipped = 0

    def resume(self):
        """Load the newest checkpoint into rank 0's state (the first sync spreads it)."""
        if self.state.trainer.rank != 0:
            return
        loaded = self.manager.load_latest()
        if loaded is None:
            return
        self.state.load_state_dict(loaded.state)
        self.state.save()
        # A relaunch is one more reset of the job: generations keep counting across launches.
        self.state.generation = loaded.state.get("generation", 0) + 1
        logger.info("resumed from %s (iteration %d)", loaded.path, self.state.trainer.iteration)

    def __call__(self, state):
        if state.trainer.rank != 0:
            return
        iteration, policy = state.trainer.iteration, state.commit_policy
        if self.last is not None and policy.max_overhead is not None:
            since, last_iteration = self.last
            if self.manager.writing or not CommitPolicy(policy.max_overhead, None, None).due(
                    iteration - last_iteration, time.monotonic() - since,
                    self.manager.last_write_cpu_seconds):
                self.skipped += 1
                return
        self.last = (time.monotonic(), iteration)
        self.written += 1
        self.manager.save(state.committed_state, step=iteration, blocking=False)

    def wait(self):
        """Wait until the last write started is on disk."""
        self.manager.wait()

    def flush(self):
        """Write the last commit if the policy left it out (the end of a job), and wait."""
        self.manager.wait()
        if self.state.trainer.rank == 0 and (self.last is None
                                             or self.last[1] != self.state.committed_iteration):
            self.last = (time.monotonic(), self.state.committed_iteration)
            self.written += 1
            self.manager.save(self.state.committed_state, step=self.state.committed_iteration)


def _finish(backend):
    """Barrier, then the caller shuts Horovod down: nobody leaves while others still talk."""
    _flush()
    _translated(backend.barrier)
    _flush()


def run(func):
    """Run ``func(state, *args, **kwargs)`` elastically; see the module docstring.

    Parameters
    ----------
    func : callable
        The training function. Its first argument is a
        :class:`gluon_elastic.state.ElasticState`; it must be restartable from that state (read
        the epoch, batch and sampler position from it) and must call ``state.commit()`` or
        ``state.check_host_updates()`` regularly. It must not run collectives before its first
        use of the state: a joining worker starts with ``state.sync()``.

    Returns
    -------
    callable
        The wrapper; it returns what ``func`` returned.
    """

    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        backend = state.trainer.backend
        if not backend.elastic_driver:
            state.sync()
            result = func(state, *args, **kwargs)
            mx.nd.waitall()
            return result
        return _run_elastic(func, state, backend, args, kwargs)

    return wrapper


def _run_elastic(func, state, backend, args, kwargs):
    import horovod.mxnet as hvd
    from horovod.common.elastic import notification_manager

    # The worker joins its world now that everything it builds before training is built: a
    # worker started ahead of a growth reports its start-up done here (see HorovodBackend).
    backend.join()
    durable = None
    if os.environ.get(ENV["checkpoint_dir"]):
        durable = _DurableCommits(state, os.environ[ENV["checkpoint_dir"]])
        # Rank 0 of a fresh process belongs to a launch's first world: the driver gives rank 0
        # to the oldest host still present, never to a joiner.
        durable.resume()
        state.register_commit_callbacks([durable])
    notification_manager.init()
    notification_manager.register_listener(state)
    try:
        while True:
            try:
                _translated(state.sync)
                result = _translated(func, state, *args, **kwargs)
                _finish(backend)
                break
            except HorovodInternalError as err:
                # First of all, make every peer fail now rather than at its Gloo timeout.
                broken = backend.break_connections()
                logger.info("rank %d: collective failed (%s); shut down %d Gloo connections, "
                            "restoring the last commit", backend.rank, err, broken)
                _flush()
                state.restore()
                removal_announced = False
            except HostsUpdatedInterrupt:
                removal_announced = bool(state.last_host_update & HOSTS_REMOVED)
            old_rank, old_size, tic = backend.rank, backend.world_size, time.time()
            # A durable write under way goes on through the reset: a survivor does not wait for
            # it. A rank 0 that is leaving finishes it before the next world can form, so that a
            # relaunch finds it (no survivor) and no other rank 0 writes beside it.
            _reset(hvd, backend, removal_announced,
                   before_leaving=durable.wait if durable is not None else None)
            elapsed = time.time() - tic
            state.on_reset()
            logger.info("reset: rank %d of %d -> rank %d of %d in %.2f s", old_rank, old_size,
                        backend.rank, backend.world_size, elapsed)
    finally:
        notification_manager.remove_listener(state)
        if durable is not None:
            durable.wait()
    if durable is not None:
        durable.flush()  # the job's last commit is durable, whatever the policy skipped
    hvd.shutdown()
    return result
