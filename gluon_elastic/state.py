"""ElasticState: what an elastic Gluon job commits, restores and hands to a joining worker.

Contract
--------
An :class:`ElasticState` tracks five things: the Gluon parameters (auxiliary ones such as
BatchNorm running statistics included), the optimizer states of the
:class:`gluon_elastic.ElasticTrainer` (momentum), the trainer's elastic state (iteration, progress,
world, transition in force), the position of an :class:`gluon_elastic.data.ElasticSampler`, and
plain user values given as keyword arguments (``state.epoch``, ``state.batch``...).

It is a :class:`horovod.common.elastic.State`: the queue of membership notifications, their
agreement across ranks and the reset callbacks are Horovod's. What MXNet needs is here:

- :meth:`save` snapshots all of it into preallocated host buffers without stalling the step: it
  waits only for the last step's own writes (so a failed collective is reported here, before
  anything is copied), then queues the copies on MXNet's engine and returns. The engine orders
  them with the steps: the next step's update of a parameter waits for the copy that reads it,
  never the Python thread. The copies are waited for when something reads the commit: a
  restore, or :meth:`committed_state` (the durable writer, in its own thread). :meth:`commit`
  saves, calls the commit callbacks (e.g. the durable checkpoint writer, which serialises and
  writes in the background), then checks for membership changes.
- **When to commit.** Besides the commits a loop asks for, :meth:`check_host_updates` commits when
  the :class:`CommitPolicy` says one is due: as often as the measured cost of a commit (its
  foreground time and the engine time of its copies) stays within half of ``max_overhead`` of
  the training time (the other half is for the durable checkpoints written from commits, see
  :mod:`gluon_elastic.run`), and at least every ``max_steps`` steps (100) and every
  ``max_seconds`` seconds (60). Rank 0 decides, and its answer travels in the broadcast that
  the check makes anyway, so every rank commits at the same step.
- :meth:`restore` puts the last commit back (after a failed collective).
- :meth:`sync` makes every rank hold rank 0's live state, so a joining worker starts from exactly
  what the others hold. Only the ranks that do not hold rank 0's trained state already (a
  joiner, a rank that rolled back to an older commit) receive it in full, through the backend's
  ``send_arrays`` (on Horovod, direct streams from rank 0); the BatchNorm statistics and the
  small values go to every rank. The trainer then compares the world it was committed in with
  the current one and starts the configured transition (Dynamic SGD ramp).
- :meth:`check_host_updates` waits for the last step's writes first (a broadcast must not overlap
  Horovod ops still queued; the snapshot copies, being reads, are not waited for) and then runs
  Horovod's check, whose agreement is one fixed-shape broadcast of rank 0's view (and of its
  commit decision); it raises :class:`horovod.common.exceptions.HostsUpdatedInterrupt` on every
  rank at the same call. On backends without an elastic driver it never raises and costs nothing.
- :meth:`state_dict` / :meth:`load_state_dict` give the same content as plain values, the format
  saved by checkpoints (KVStore restarts, the durable commits of elastic Horovod).
"""
import contextlib
import copy
import logging
import threading
import time

import mxnet as mx
import numpy as np
from horovod.common.elastic import State
from horovod.common.exceptions import HostsUpdatedInterrupt

__all__ = ["ElasticState", "CommitPolicy", "STATE_FORMAT", "STATE_VERSION"]

logger = logging.getLogger("gluon_elastic")

STATE_FORMAT = "gluon_elastic.ElasticState"
STATE_VERSION = 1
# Bit of horovod.runner.elastic.worker.HostUpdateResult meaning "some slot was removed".
HOSTS_REMOVED = 1
_RESERVED = frozenset(("trainer", "sampler", "params", "generation", "last_host_update"))


def _collect_params(net_or_params):
    """Parameters in a fixed order from a Block, a ParameterDict, a dict or a list."""
    if hasattr(net_or_params, "collect_params"):
        net_or_params = net_or_params.collect_params()
    if hasattr(net_or_params, "values"):
        params = list(net_or_params.values())
    else:
        params = list(net_or_params)
    if not params or not all(isinstance(p, mx.gluon.Parameter) for p in params):
        raise ValueError("net_or_params must be a Gluon Block, ParameterDict or a non-empty list "
                         "of Parameters, got %r" % (type(net_or_params).__name__,))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique, got duplicates in %s" % names)
    return params


class CommitPolicy:
    """When a commit is due: as often as its cost allows, and never too rarely.

    Parameters
    ----------
    max_overhead : float or None
        Largest share of the training time that commits may take (0.01: 1 %), half for the
        commits themselves and half for the durable checkpoints written from them: a commit is
        due once the time since the last one is at least twice its cost divided by this. None:
        only the caps (and every commit is made durable).
    max_steps : int or None
        A commit is due at the latest this many steps after the last one.
    max_seconds : float or None
        A commit is due at the latest this many seconds after the last one.
    """

    def __init__(self, max_overhead=0.01, max_steps=100, max_seconds=60.0):
        if max_overhead is not None and not 0 < max_overhead <= 1:
            raise ValueError("max_overhead must be in (0, 1] or None, got %r" % (max_overhead,))
        for name, value in (("max_steps", max_steps), ("max_seconds", max_seconds)):
            if value is not None and not value > 0:
                raise ValueError("%s must be > 0 or None, got %r" % (name, value))
        self.max_overhead = max_overhead
        self.max_steps = max_steps
        self.max_seconds = max_seconds

    def due(self, steps, seconds, cost):
        """Whether to commit ``steps`` steps and ``seconds`` seconds after the last commit.

        Parameters
        ----------
        steps : int
            Optimizer steps since the last commit (none: never due).
        seconds : float
            Wall time since the last commit.
        cost : float
            Seconds of training time one commit (or one durable write) takes; it gets half of
            ``max_overhead``.
        """
        if steps <= 0:
            return False
        if self.max_steps is not None and steps >= self.max_steps:
            return True
        if self.max_seconds is not None and seconds >= self.max_seconds:
            return True
        return self.max_overhead is not None and 2 * cost <= self.max_overhead * seconds

    def __repr__(self):
        return "CommitPolicy(max_overhead=%r, max_steps=%r, max_seconds=%r)" % (
            self.max_overhead, self.max_steps, self.max_seconds)


def _substitute(state, arrays):
    """``state`` with each of its NDArrays replaced by the next of the iterator ``arrays``."""
    if isinstance(state, mx.nd.NDArray):
        return next(arrays)
    if isinstance(state, (tuple, list)):
        return type(state)(_substitute(part, arrays) for part in state)
    return state


class _Snapshot:
    """Host copies of the tracked arrays, written by copies queued on MXNet's engine.

    Each buffer is a numpy array and an NDArray sharing its memory (``mx.nd.from_numpy`` without
    a copy): the engine writes it in order with the steps, and a reader in another thread reads
    the numpy array once the NDArray's pending writes are done. ``lock`` is held by a reader for
    as long as it reads, and by a commit while it queues new copies, so a reader never sees a
    half-overwritten commit. The buffers are reallocated only when the shapes change.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.host = []
        self.buffers = []
        self.num_params = 0
        self.iteration = None    # the trainer's iteration at the commit
        self.states = None       # the first device's optimizer states, buffers in place of arrays
        self.optimizer = None    # the trainer's portable optimizer of the commit
        self.values = None       # the small values of the commit (counters, elastic, sampler...)

    def copy_from(self, sources):
        """Queue ``source.copyto(buffer)`` for every source array (caller holds ``lock``)."""
        layout = [(tuple(a.shape), np.dtype(a.dtype)) for a in sources]
        if layout != [(h.shape, h.dtype) for h in self.host]:
            self.host = [np.empty(shape, dtype=dtype) for shape, dtype in layout]
            self.buffers = [mx.nd.from_numpy(h, zero_copy=True) for h in self.host]
        for source, buffer in zip(sources, self.buffers):
            source.copyto(buffer)

    def wait(self):
        """Wait until every queued copy has landed (caller holds ``lock``)."""
        for buffer in self.buffers:
            buffer.wait_to_read()

    @property
    def num_bytes(self):
        return sum(h.nbytes for h in self.host)


class ElasticState(State):
    """Commit/restore/sync of a Gluon model, its ElasticTrainer, a sampler and user values.

    Parameters
    ----------
    net_or_params : mxnet.gluon.Block, ParameterDict or list of Parameter
        The model; every parameter is tracked, including those with ``grad_req='null'``.
        Parameters must be initialised (run one forward pass to resolve deferred shapes).
    trainer : gluon_elastic.ElasticTrainer
        Its backend carries the broadcasts of :meth:`sync`.
    sampler : gluon_elastic.data.ElasticSampler, optional
        Its ``{epoch, processed}`` position is committed and broadcast.
    commit_policy : CommitPolicy, optional
        When :meth:`check_host_updates` commits on its own (default ``CommitPolicy()``: within
        1 % of the training time, at least every 100 steps and 60 s); ``CommitPolicy(None, None,
        None)`` leaves every commit to the loop.
    **user_values
        Plain Python values (picklable) exposed as attributes, e.g. ``epoch=0, batch=0``.

    Attributes
    ----------
    generation : int
        Number of resets this job has gone through (rank 0's count after a sync).
    last_host_update : int
        Combined kind of the last membership change acted upon (Horovod's ``HostUpdateResult``
        bits: 1 slots removed, 2 slots added).
    last_sync_receivers : list of int or None
        The ranks the last :meth:`sync` sent the full state to (None before the first sync).
    last_transfer : tuple or None
        ``(bytes, seconds)`` of the last full-state transfer (this rank's side of it).
    commit_count : int
        Commits taken since construction.
    last_commit_seconds : float
        Foreground time of the last commit once the step's own writes were done: queueing the
        copies, capturing the small values, the commit callbacks.
    copy_seconds : float
        Engine time of the snapshot's copies, measured once at construction (they run beside
        the next step, on the engine's threads).
    """

    def __init__(self, net_or_params, trainer, sampler=None, commit_policy=None, **user_values):
        self._user_names = list(user_values)
        self.generation = 0
        clash = _RESERVED.intersection(user_values)
        if clash:
            raise ValueError("user value names %s are reserved by ElasticState" % sorted(clash))
        self.params = _collect_params(net_or_params)
        for param in self.params:
            if param._deferred_init:  # pylint: disable=protected-access
                raise ValueError("parameter %s is not initialised yet: run a forward pass before "
                                 "creating the ElasticState" % param.name)
        self.trainer = trainer
        self.sampler = sampler
        self.commit_policy = commit_policy if commit_policy is not None else CommitPolicy()
        for name, value in user_values.items():
            setattr(self, name, value)
        super().__init__(bcast_object=self._broadcast_host_view, get_rank=lambda: trainer.rank)
        self.last_host_update = 0
        self._host_view = (0, 0, 0)
        self._commit_callbacks = []
        self._snapshot = _Snapshot()
        self._in_lineage = False
        self.last_sync_receivers = None
        self.last_transfer = None
        self._commit_wanted = False
        self._commit_agreed = False
        self._last_commit = (time.monotonic(), trainer.iteration)
        self.commit_count = 0
        self.last_commit_seconds = 0.0
        # The first snapshot allocates (and faults in) the buffers; the second, waited for, gives
        # the engine time of a commit's copies.
        for _ in range(2):
            tic = time.perf_counter()
            self.save()
            with self._snapshot.lock:
                self._snapshot.wait()
            self.copy_seconds = time.perf_counter() - tic
        self.commit_count = 0
        # A joiner receives the state in its first sync: its host memory for that is made ready
        # now, during its start-up.
        trainer.backend.reserve_send_buffers(self._state_arrays())

    # ------------------------------------------------------------------------ plain-value form
    def user_values(self):
        """The user values as a dict ``{name: value}``."""
        return {name: getattr(self, name) for name in self._user_names}

    def state_dict(self):
        """Everything tracked, as plain values (numpy arrays, bytes, dicts).

        Returns
        -------
        dict
            ``{"format", "version", "params": {name: ndarray}, "trainer": bytes,
            "sampler": dict or None, "user": dict}``.
        """
        return {"format": STATE_FORMAT, "version": STATE_VERSION,
                "params": {p.name: p.list_data()[0].asnumpy() for p in self.params},
                "trainer": self.trainer.states_bytes(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "user": copy.deepcopy(self.user_values())}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (from this job or from a checkpoint).

        Raises
        ------
        ValueError
            When ``state`` is not an ElasticState dict, is from a newer version, or its parameter
            names or shapes differ from this model's.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not an ElasticState dict (format %r)"
                             % (state.get("format") if isinstance(state, dict) else type(state)))
        if state["version"] > STATE_VERSION:
            raise ValueError("ElasticState version %r is newer than this gluon_elastic reads (%d)"
                             % (state["version"], STATE_VERSION))
        saved = state["params"]
        names = {p.name for p in self.params}
        if set(saved) != names:
            raise ValueError("ElasticState parameters differ from the model's: missing %s, "
                             "unexpected %s" % (sorted(names - set(saved)),
                                                sorted(set(saved) - names)))
        for param in self.params:
            value = np.asarray(saved[param.name])
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError("ElasticState parameter %s has shape %s, the model's is %s"
                                 % (param.name, value.shape, param.shape))
            param.set_data(mx.nd.array(value, dtype=param.dtype))
        self.trainer.load_states_bytes(state["trainer"], source="ElasticState")
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        for name, value in state["user"].items():
            if name not in self._user_names:
                self._user_names.append(name)
            setattr(self, name, copy.deepcopy(value))
        self._in_lineage = False
        mx.nd.waitall()

    # -------------------------------------------------------------------- commit / restore / sync
    def _wait_for_step(self):
        """Wait for the pending writes of the last step; raise the errors of its operations.

        Parameters, their gradients (the outputs of the step's collectives) and the optimizer
        states. Pending reads, such as the copies of a snapshot, are not waited for.
        """
        for param in self.params:
            for array in param.list_data():
                array.wait_to_read()
            if param.grad_req != "null":
                for grad in param.list_grad():
                    grad.wait_to_read()
        for array in self.trainer.optimizer_state_arrays():
            array.wait_to_read()

    def save(self):
        """Snapshot the current state into host buffers (without checking for host changes).

        Returns once the copies are queued on MXNet's engine; the snapshot is complete when the
        engine has run them (:meth:`restore` and :meth:`committed_state` wait for that). Errors of
        the last step's operations are raised here, before anything is copied, so a snapshot
        never holds the result of a failed step.
        """
        self._wait_for_step()
        trainer = self.trainer
        states = trainer.first_device_states()
        sources = self._state_arrays()
        snapshot = self._snapshot
        with snapshot.lock:  # a durable writer may still be reading the previous commit
            snapshot.copy_from(sources)
            snapshot.num_params = len(self.params)
            buffers = iter(snapshot.buffers[len(self.params):])
            snapshot.states = {index: _substitute(states[index], buffers)
                               for index in sorted(states)}
            snapshot.iteration = trainer.iteration
            snapshot.optimizer = trainer.portable_optimizer()
            snapshot.values = copy.deepcopy({
                "counters": trainer.optimizer_counters(),
                "elastic": trainer.elastic_state_dict(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "user": self.user_values(),
                "generation": self.generation})
        self._last_commit = (time.monotonic(), trainer.iteration)
        self.commit_count += 1

    def _commit_here(self):
        """Save and call the commit callbacks (no collective); times the foreground part."""
        self._wait_for_step()  # the step's own time is not the commit's
        tic = time.perf_counter()
        self.save()
        for callback in self._commit_callbacks:
            callback(self)
        self.last_commit_seconds = time.perf_counter() - tic

    def commit(self):
        """Save the state, call the commit callbacks, then check for membership changes.

        Raises
        ------
        horovod.common.exceptions.HostsUpdatedInterrupt
            When the elastic driver announced a change (on every rank at once).
        """
        self._commit_here()
        self.check_host_updates()

    @property
    def commit_cost(self):
        """Seconds of training time one commit takes: its foreground time and its copies."""
        return self.last_commit_seconds + self.copy_seconds

    def commit_due(self):
        """Whether :attr:`commit_policy` asks for a commit now (this rank's view)."""
        since, iteration = self._last_commit
        return self.commit_policy.due(self.trainer.iteration - iteration,
                                      time.monotonic() - since, self.commit_cost)

    @property
    def committed_iteration(self):
        """The trainer's iteration at the last commit."""
        return self._snapshot.iteration

    @contextlib.contextmanager
    def committed_state(self):
        """The last commit as plain values, in the :meth:`state_dict` layout, in any thread.

        Yields the dict once the commit's copies have landed, plus ``"generation"``; the next
        commit waits until the block is left before overwriting the buffers. Its arrays are
        read-only views of those buffers: serialise or copy them inside the block.
        """
        snapshot = self._snapshot
        with snapshot.lock:
            snapshot.wait()
            values = snapshot.values
            yield {"format": STATE_FORMAT, "version": STATE_VERSION,
                   "params": {p.name: h for p, h in
                              zip(self.params, snapshot.host[:snapshot.num_params])},
                   "trainer": self.trainer.states_bytes(states=snapshot.states,
                                                        optimizer=snapshot.optimizer),
                   "sampler": values["sampler"], "user": values["user"],
                   "generation": values["generation"]}

    def restore(self):
        """Go back to the last commit, undoing the work done since.

        Every device's copy of the parameters and optimizer states gets the committed values.
        """
        trainer = self.trainer
        snapshot = self._snapshot
        with snapshot.lock:
            snapshot.wait()
            count = snapshot.num_params
            for param, buffer in zip(self.params, snapshot.buffers[:count]):
                param.set_data(buffer)
            # The commit holds the first device's optimizer states; every device gets them
            # (optimizer_state_arrays lists the devices one after the other).
            saved = snapshot.buffers[count:]
            live = trainer.optimizer_state_arrays()
            per_device = [a.shape for a in saved]
            runs = [live[i:i + len(saved)] for i in range(0, len(live), len(saved) or 1)]
            if any([a.shape for a in run] != per_device for run in runs) \
                    or bool(live) != bool(saved):
                raise RuntimeError("the trainer's optimizer states changed layout since the last "
                                   "commit (%d arrays, %d committed)" % (len(live), len(saved)))
            for run in runs:
                for buffer, target in zip(saved, run):
                    buffer.copyto(target)
            values = copy.deepcopy(snapshot.values)
            mx.nd.waitall()
        trainer.load_optimizer_counters(values["counters"])
        trainer.load_elastic_state_dict(values["elastic"])
        if self.sampler is not None and values["sampler"] is not None:
            self.sampler.load_state_dict(values["sampler"])
        for name, value in values["user"].items():
            if name not in self._user_names:
                self._user_names.append(name)
            setattr(self, name, value)

    def _held_state(self):
        """Which trained state this rank holds: its iteration, or None when unknown.

        Every rank of a job that synced once follows one lineage: the same steps from the same
        state, so ranks at the same iteration hold the same parameters and optimizer states,
        live or restored from a commit (commits are taken at agreed steps). A rank that never
        synced (a joiner, a fresh launch) or that loaded a state from elsewhere holds an
        unknown one.
        """
        return self.trainer.iteration if self._in_lineage else None

    def _full_state_receivers(self):
        """The ranks that need rank 0's full state: those that do not hold it already.

        One sum over the workers of a vector with a slot per rank (its iteration + 1, or 0 when
        unknown): a rank needs the state when its slot differs from rank 0's; every rank needs
        it when rank 0's is unknown.
        """
        backend = self.trainer.backend
        held = self._held_state()
        slots = np.zeros(backend.world_size, dtype=np.float64)
        slots[backend.rank] = 0.0 if held is None else held + 1.0
        slots = backend.sum_over_workers(slots)
        if slots[0] == 0:
            return list(range(1, backend.world_size))
        return [rank for rank in range(1, backend.world_size) if slots[rank] != slots[0]]

    def sync(self):
        """Make every rank hold rank 0's live state.

        Parameters (auxiliary included) and every optimizer state array (momentum, fp32 master
        weights...) travel as arrays; the trainer's elastic and optimizer counters, the sampler
        position, the user values and the reset count travel as one object. The trainer then
        applies the transition from the world of rank 0's state to the current one.

        The full state goes only to the ranks that do not hold it (:meth:`_held_state`): a
        joiner, every rank after a fresh launch, a rank that rolled back to an older commit
        than rank 0's. The survivors of a shrink or of a failure hold rank 0's trained state
        already. The backend's :meth:`send_arrays` carries it (on Horovod, direct streams from
        rank 0 to the receivers); the parameters without gradient (BatchNorm running
        statistics, which follow each rank's own batches) are broadcast to every rank.
        """
        backend = self.trainer.backend
        mx.nd.waitall()
        receivers = []
        if backend.world_size > 1:
            receivers = self._full_state_receivers()
            if receivers:
                tic = time.perf_counter()
                arrays = self._state_arrays()
                backend.send_arrays(arrays, receivers, root_rank=0, name="state")
                if backend.rank in receivers:
                    self._spread_first_device(arrays[len(self.params):])
                self.last_transfer = (sum(a.size * np.dtype(a.dtype).itemsize for a in arrays),
                                      time.perf_counter() - tic)
                if backend.rank == 0 or backend.rank in receivers:
                    logger.info("sync: rank 0's full state (%.3g MB) to ranks %s in %.3f s",
                                self.last_transfer[0] / 1e6, receivers, self.last_transfer[1])
            self._broadcast_statistics()
        self.last_sync_receivers = receivers
        meta = backend.broadcast_object(dict({
            "elastic": self.trainer.elastic_state_dict(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "user": self.user_values(),
            "generation": self.generation}, **self.trainer.optimizer_counters()),
            root_rank=0, name="elastic_state")
        mx.nd.waitall()
        self.trainer.load_optimizer_counters(meta)
        self.trainer.load_elastic_state_dict(meta["elastic"])
        if self.sampler is not None and meta["sampler"] is not None:
            self.sampler.load_state_dict(meta["sampler"])
        for name, value in meta["user"].items():
            setattr(self, name, value)
        self.generation = meta["generation"]
        self._in_lineage = True

    def _broadcast_statistics(self):
        """Rank 0's parameters without gradient (BatchNorm statistics) to every rank.

        Concatenated into one array per dtype: one collective instead of one per statistic
        (ResNet-50 has 106, each a Horovod negotiation).
        """
        groups = {}
        for param in self.params:
            if param.grad_req == "null":
                groups.setdefault(np.dtype(param.dtype).name, []).append(param)
        for dtype, params in sorted(groups.items()):
            flat = mx.nd.concat(*[p.list_data()[0].reshape(-1) for p in params], dim=0)
            self.trainer.backend.broadcast_arrays([flat], root_rank=0, name="statistics." + dtype)
            offset = 0
            for param in params:
                size = int(np.prod(param.shape))
                param.set_data(flat[offset:offset + size].reshape(param.shape))
                offset += size

    def _state_arrays(self):
        """The first device's parameters and optimizer states: what a commit copies and a
        full-state transfer carries.

        The optimizer states come in the order of the trainer's ``first_device_states`` (by
        parameter index, each state's arrays in order), which :func:`_substitute` follows.
        """
        return [p.list_data()[0] for p in self.params] + \
            self.trainer.optimizer_state_arrays(first_device=True)

    def _spread_first_device(self, first_states):
        """Give the other devices the first device's parameters and optimizer states."""
        for param in self.params:
            values = param.list_data()
            for other in values[1:]:
                values[0].copyto(other)
        live = self.trainer.optimizer_state_arrays()
        for start in range(len(first_states), len(live), len(first_states) or 1):
            for source, target in zip(first_states, live[start:start + len(first_states)]):
                source.copyto(target)

    # ---------------------------------------------------------------------- membership changes
    def _broadcast_host_view(self, view):
        """Horovod's agreement on host updates as one collective: rank 0's values win.

        A fixed-shape float64 array rather than a pickled object: an object costs two
        collectives (its size, then its bytes), and this runs at every check. Rank 0's commit
        decision travels in a fourth element.
        """
        array = mx.nd.array(list(view) + [float(self._commit_wanted)], dtype="float64")
        self.trainer.backend.broadcast_arrays([array], root_rank=0, name="host_updates")
        values = array.asnumpy()
        self._host_view = tuple(int(v) for v in values[:3])
        self._commit_agreed = bool(values[3])
        return self._host_view

    def check_host_updates(self):
        """Raise ``HostsUpdatedInterrupt`` on every rank if the driver announced a change.

        Rank 0 receives the driver's notifications; its view (previous and latest timestamp,
        combined update kind) is broadcast so that all ranks raise at the same call, and the
        combined kind is kept in ``last_host_update`` for the reset that follows. When rank 0's
        :attr:`commit_policy` says a commit is due, every rank commits here first (before
        raising, if it raises: no work is lost by a membership change).
        """
        if not self.trainer.backend.elastic_driver:
            return
        # The broadcast must not overlap Horovod ops still queued: wait for the step's writes.
        self._wait_for_step()
        self._commit_wanted = self.trainer.rank == 0 and self.commit_due()
        self._commit_agreed = False
        try:
            super().check_host_updates()
        except HostsUpdatedInterrupt:
            self.last_host_update = self._host_view[2]
            if self._commit_agreed:
                self._commit_here()
            raise
        if self._commit_agreed:
            self._commit_here()

    # ------------------------------------------------------------------------------ callbacks
    def register_commit_callbacks(self, callbacks):
        """Call each of ``callbacks`` with this state after every commit (e.g. to checkpoint)."""
        self._commit_callbacks.extend(callbacks)

    def reset(self):
        """Horovod's hook after a reset (new world, before the callbacks and the sync)."""
        self.generation += 1
        # Reading the multiplier makes the trainer compare its world with the backend's and
        # start the transition now (logged once per change); the sync that follows replaces it
        # with rank 0's, which made the same decision.
        self.trainer.multiplier  # pylint: disable=pointless-statement

    def __repr__(self):
        return "ElasticState(%d parameters, %s, generation %d)" % (
            len(self.params), ", ".join("%s=%r" % kv for kv in self.user_values().items()),
            self.generation)
