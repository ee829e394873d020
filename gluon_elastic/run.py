"""The elastic run loop: ``@gluon_elastic.run.run`` around a training function.

    state = ElasticState(net, trainer, sampler, epoch=0)

    @gluon_elastic.run.run
    def fit(state):
        while state.epoch < num_epochs:
            sampler.set_epoch(state.epoch)
            for indices, global_batch_size in sampler.iter_batches(
                    trainer.batch_policy.local_batch_sizes(trainer.world_size), trainer.rank):
                ...  # forward/backward on dataset[indices]
                trainer.step(global_batch_size=global_batch_size)
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
- A worker that the driver removes must not abort: Horovod's re-initialisation throws in a C++
  thread when its slot has no rank any more (exit 134). Before re-initialising after a change
  announced as removing slots, each worker asks the driver's rendezvous store for its new rank
  (the same question Horovod's re-initialisation asks) and, when the answer is "none", leaves
  with exit code 0, which the driver ignores for slots it no longer assigns. After a failure
  nobody asks early (see the comment in the loop).

A survivor that was exchanging data with another survivor (not with the dead worker) when the
failure happened only learns of it when Gloo gives up on that exchange: up to
``HOROVOD_GLOO_TIMEOUT_SECONDS`` later (seen on this machine in about half of the rank-0 kills).

Limit: the early question registers the worker in the driver's next rendezvous round, and the
re-initialisation registers it once more. After a removal, that second round completes with the
survivors; a worker *added* in the same round as a removal would not register again and the
survivors would wait for it. Membership changes that add and remove at once should therefore be
announced as two changes (a discovery script that moves in single steps).

On backends that are not elastic in place (KVStore: restart elasticity), on the local backend
and under plain ``horovodrun -np N``, the wrapper syncs once and calls ``func(state)`` once.
"""
import functools
import logging
import os
import sys
import time
import urllib.request

import mxnet as mx

from .state import HOSTS_REMOVED

__all__ = ["run", "HorovodInternalError", "HostsUpdatedInterrupt", "is_horovod_error",
           "ask_rank_and_size"]

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
            raise HorovodInternalError(str(err).strip().splitlines()[0]) from err
        raise


def _flush():
    """Wait for MXNet's engine; errors of ops that failed with the old world are dropped."""
    try:
        mx.nd.waitall()
    except mx.base.MXNetError as err:
        if not is_horovod_error(err):
            raise


def ask_rank_and_size(timeout=600.0):
    """Ask the elastic driver's rendezvous store for this slot's rank in the next world.

    Blocks until every worker of the current world has asked (the driver's barrier), like
    Horovod's own re-initialisation does.

    Returns
    -------
    tuple of int
        ``(rank, size, local_rank, local_size, cross_rank, cross_size)``; rank -1 means this slot
        has been removed from the job.
    """
    addr = os.environ["HOROVOD_GLOO_RENDEZVOUS_ADDR"]
    port = os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"]
    key = "%s:%s" % (os.environ["HOROVOD_HOSTNAME"], os.environ["HOROVOD_LOCAL_RANK"])
    url = "http://%s:%s/rank_and_size/%s" % (addr, port, key)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        values = tuple(int(v) for v in response.read().decode("ascii").split(","))
    if len(values) != 6:
        raise RuntimeError("unexpected rendezvous answer %r from %s" % (values, url))
    return values


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


def _reset(hvd, removal_possible):
    """Shut Horovod down and re-initialise it on the new world."""
    _flush()
    hvd.shutdown()
    if removal_possible:
        if ask_rank_and_size()[0] < 0:
            _leave_removed()
    hvd.init()


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
                logger.info("rank %d: collective failed (%s); restoring the last commit",
                            backend.rank, err)
                _flush()
                state.restore()
                # No early question after a failure: the driver blacklists the dead worker's
                # whole host and terminates the workers it had there, so no survivor can find
                # itself removed; every survivor registers exactly once, in Horovod's own
                # re-initialisation.
                removal_possible = False
            except HostsUpdatedInterrupt:
                removal_possible = bool(state.last_host_update & HOSTS_REMOVED)
            old_rank, old_size, tic = backend.rank, backend.world_size, time.time()
            _reset(hvd, removal_possible)
            elapsed = time.time() - tic
            state.on_reset()
            logger.info("reset: rank %d of %d -> rank %d of %d in %.2f s", old_rank, old_size,
                        backend.rank, backend.world_size, elapsed)
    finally:
        notification_manager.remove_listener(state)
    hvd.shutdown()
    return result
