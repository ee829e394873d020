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

- :meth:`save` copies all of it to host memory; :meth:`commit` saves, calls the commit callbacks
  (e.g. the durable checkpoint writer), then checks for membership changes. Commits cost a
  device-to-host copy of the model and its momentum: commit every few steps, not every step; the
  work since the last commit is what a failure costs.
- :meth:`restore` puts the last commit back (after a failed collective).
- :meth:`sync` broadcasts rank 0's live state to every rank through the trainer's backend, so a
  joining worker starts from exactly what the others hold. The trainer then compares the world it
  was committed in with the current one and starts the configured transition (Dynamic SGD ramp).
- :meth:`check_host_updates` flushes MXNet's engine first (a broadcast must not overlap Horovod ops
  still queued) and then runs Horovod's check, whose agreement is one fixed-shape broadcast of
  rank 0's view; it raises :class:`horovod.common.exceptions.HostsUpdatedInterrupt` on every rank
  at the same call. On backends without an elastic driver it never raises and costs nothing.
- :meth:`state_dict` / :meth:`load_state_dict` give the same content as plain values, the format
  saved by checkpoints (KVStore restarts, the durable commits of elastic Horovod).
"""
import copy
import logging

import mxnet as mx
import numpy as np
from horovod.common.elastic import State
from horovod.common.exceptions import HostsUpdatedInterrupt

__all__ = ["ElasticState", "STATE_FORMAT", "STATE_VERSION"]

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
    **user_values
        Plain Python values (picklable) exposed as attributes, e.g. ``epoch=0, batch=0``.

    Attributes
    ----------
    generation : int
        Number of resets this job has gone through (rank 0's count after a sync).
    last_host_update : int
        Combined kind of the last membership change acted upon (Horovod's ``HostUpdateResult``
        bits: 1 slots removed, 2 slots added).
    """

    def __init__(self, net_or_params, trainer, sampler=None, **user_values):
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
        for name, value in user_values.items():
            setattr(self, name, value)
        super().__init__(bcast_object=self._broadcast_host_view, get_rank=lambda: trainer.rank)
        self.last_host_update = 0
        self._host_view = (0, 0, 0)
        self._commit_callbacks = []
        self._saved = None
        self.save()

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
        mx.nd.waitall()

    # -------------------------------------------------------------------- commit / restore / sync
    def save(self):
        """Copy the current state to host memory (without checking for host changes)."""
        self._saved = self.state_dict()

    def commit(self):
        """Save the state, call the commit callbacks, then check for membership changes.

        Raises
        ------
        horovod.common.exceptions.HostsUpdatedInterrupt
            When the elastic driver announced a change (on every rank at once).
        """
        self.save()
        for callback in self._commit_callbacks:
            callback(self)
        self.check_host_updates()

    @property
    def saved_state_dict(self):
        """The last commit as plain values (what :meth:`state_dict` returned at :meth:`save`)."""
        return self._saved

    def restore(self):
        """Go back to the last commit, undoing the work done since."""
        self.load_state_dict(self._saved)

    def sync(self):
        """Make every rank hold rank 0's live state.

        Parameters (auxiliary included) and every optimizer state array (momentum, fp32 master
        weights...) travel as arrays; the trainer's elastic and optimizer counters, the sampler
        position, the user values and the reset count travel as one object. The trainer then applies the transition from the world of rank 0's state to
        the current one.
        """
        backend = self.trainer.backend
        mx.nd.waitall()
        backend.broadcast_parameters(self.params, root_rank=0)
        backend.broadcast_arrays(self.trainer.optimizer_state_arrays(), root_rank=0,
                                 name="optimizer_states")
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

    # ---------------------------------------------------------------------- membership changes
    def _broadcast_host_view(self, view):
        """Horovod's agreement on host updates as one collective: rank 0's 3 integers win.

        A fixed-shape float64 array rather than a pickled object: an object costs two
        collectives (its size, then its bytes), and this runs at every check.
        """
        array = mx.nd.array(view, dtype="float64")
        self.trainer.backend.broadcast_arrays([array], root_rank=0, name="host_updates")
        self._host_view = tuple(int(v) for v in array.asnumpy())
        return self._host_view

    def check_host_updates(self):
        """Raise ``HostsUpdatedInterrupt`` on every rank if the driver announced a change.

        Rank 0 receives the driver's notifications; its view (previous and latest timestamp,
        combined update kind) is broadcast so that all ranks raise at the same call, and the
        combined kind is kept in ``last_host_update`` for the reset that follows.
        """
        if not self.trainer.backend.elastic_driver:
            return
        # Flush MXNet's engine: the broadcast must not overlap Horovod ops still queued.
        mx.nd.waitall()
        try:
            super().check_host_updates()
        except HostsUpdatedInterrupt:
            self.last_host_update = self._host_view[2]
            raise

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
