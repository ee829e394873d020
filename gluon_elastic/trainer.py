"""ElasticTrainer: a ``gluon.Trainer`` whose batch size and learning rate follow the world size.

How it differs from :class:`mxnet.gluon.Trainer`:

1. The applied update is the mean gradient over the *global* batch on every backend. The backend
   says whether its reduction returns the sum or the mean over workers, and :meth:`step` sets
   ``rescale_grad`` from that and the global batch size of the current world, in one place.
2. The LR is set before every step to ``schedule(progress) * multiplier(iteration)``: the base
   schedule is a function of samples trained, the multiplier follows the scaling rule at the
   current global batch, through the configured transition (Dynamic SGD ramp by default).
3. With ``momentum_correction`` (the default), the momentum buffers of ``sgd`` and ``nag`` are
   multiplied by ``lr_t / lr_{t-1}`` whenever the LR changes, so MXNet's v-form update
   (LR inside the buffer) follows the paper's u-form equations exactly.
4. ``nag`` runs a corrected update: MXNet 1.9.1's ``nag_mom_update`` computes the weight-decay term
   of the momentum from the already-updated weight.
5. Updates run on the workers (``update_on_kvstore=False``) and a distributed KVStore is
   initialised eagerly, followed by a barrier (the lazy path raced on some ranks).
6. An MXNet ``lr_scheduler`` is refused: pass a :class:`gluon_elastic.schedule.Schedule`.
7. :meth:`save_states` / :meth:`load_states` carry the elastic state (progress, iteration, world,
   transition) beside the optimizer states, in a versioned format.
"""
import logging
import pickle

import mxnet as mx
from mxnet import gluon

from . import backends as _backends
from .policy import BatchPolicy, Transition, lr_scale, SCALING_RULES
from .schedule import Schedule

__all__ = ["ElasticTrainer", "STATE_FORMAT", "STATE_VERSION"]

logger = logging.getLogger("gluon_elastic")

STATE_FORMAT = "gluon_elastic.ElasticTrainer"
STATE_VERSION = 1
# Optimizers whose state holds the LR (v-form) and so needs rescaling when the LR changes.
_V_FORM_OPTIMIZERS = (mx.optimizer.SGD, mx.optimizer.NAG)


class CorrectedNAG(mx.optimizer.NAG):
    """Nesterov momentum in v-form with the weight-decay term taken from the weight before the step.

    ``g' = rescale_grad * g + wd * w``;  ``v <- mu * v - lr * g'``;  ``w <- w + mu * v - lr * g'``,
    i.e. the u-form ``u <- mu * u + g'``; ``w <- w - lr * (g' + mu * u)`` with ``v = -lr * u``.
    """

    def _update_impl(self, index, weight, grad, state, multi_precision=False):
        if multi_precision or state is None:
            return super()._update_impl(index, weight, grad, state, multi_precision)
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        grad = grad * self.rescale_grad
        if self.clip_gradient is not None:
            grad = mx.nd.clip(grad, -self.clip_gradient, self.clip_gradient)
        step = lr * (grad + wd * weight)
        state[:] = self.momentum * state - step
        weight[:] = weight + self.momentum * state - step
        return None


class ElasticTrainer(gluon.Trainer):
    """Trainer for elastic data-parallel training with Dynamic mini-batch SGD.

    Parameters
    ----------
    params, optimizer, optimizer_params, compression_params
        As for :class:`mxnet.gluon.Trainer`. ``optimizer_params['learning_rate']`` is the base LR
        (at ``base_batch_size``) unless ``schedule`` is given.
    kvstore : str, mxnet.kvstore.KVStore or gluon_elastic.backends.Backend
        ``'device'``/``'local'`` (one process), ``'dist_sync'``/``'dist_device_sync'``,
        ``'horovod'``, a KVStore object or a backend. Default ``'device'``.
    update_on_kvstore : None or False
        Updates always run on the workers; True is refused.
    local_batch_size : int, optional
        Per-worker batch, for ``batch_policy='fixed_local'`` (the paper's setting).
    global_batch_size : int, optional
        Global batch, for ``batch_policy='fixed_global'``.
    batch_policy : {'fixed_local', 'fixed_global'}
        See :class:`gluon_elastic.policy.BatchPolicy`.
    base_batch_size : int, optional
        Global batch size at which the base LR holds. Default: the global batch of the world at
        construction (so the LR given is the LR of the starting world).
    scaling : {'linear', 'sqrt', 'none'}
        LR scaling rule relative to ``base_batch_size``.
    schedule : gluon_elastic.schedule.Schedule, optional
        Base LR as a function of samples trained. Default: constant at the optimizer's LR.
    transition : {'dynamic', 'immediate'} or gluon_elastic.policy.Transition
        How the LR multiplier moves on a world change.
    ramp_iters, ramp_per_k, shrink
        Ramp length ``T`` (iterations, or per unit of ``k``) and shrink behaviour of ``dynamic``;
        see :class:`gluon_elastic.policy.Transition`.
    momentum_correction : bool
        Rescale momentum by ``lr_t / lr_{t-1}`` whenever the LR changes (u-form semantics).
        False gives MXNet's native v-form.
    """

    def __init__(self, params, optimizer, optimizer_params=None, kvstore="device",
                 compression_params=None, update_on_kvstore=None, *, local_batch_size=None,
                 global_batch_size=None, batch_policy="fixed_local", base_batch_size=None,
                 scaling="linear", schedule=None, transition="dynamic", ramp_iters=None,
                 ramp_per_k=None, shrink="immediate", momentum_correction=True):
        if update_on_kvstore:
            raise ValueError("update_on_kvstore=True is not supported by ElasticTrainer: the LR "
                             "must follow the world on the workers; pass None or False")
        optimizer_params = dict(optimizer_params or {})
        scheduler = optimizer_params.get("lr_scheduler",
                                         getattr(optimizer, "lr_scheduler", None))
        if scheduler is not None:
            raise ValueError("lr_scheduler: ElasticTrainer sets the LR itself every step; pass "
                             "schedule=gluon_elastic.Schedule(...) instead of an MXNet lr_scheduler")
        lr = optimizer_params.get("learning_rate", getattr(optimizer, "lr", 0.01))
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError("learning_rate must be a number >= 0, got %r" % (lr,))
        if scaling not in SCALING_RULES:
            raise ValueError("scaling must be one of %s, got %r" % (", ".join(SCALING_RULES), scaling))
        if isinstance(optimizer, str) and optimizer.lower() == "nag":
            optimizer = CorrectedNAG(**optimizer_params)
            optimizer_params = None
        elif type(optimizer) is mx.optimizer.NAG:  # pylint: disable=unidiomatic-typecheck
            # Same state and arguments; only the update differs (see CorrectedNAG).
            optimizer.__class__ = CorrectedNAG

        self._backend = _backends.create(kvstore)
        self._policy = BatchPolicy(batch_policy, local_batch_size=local_batch_size,
                                   global_batch_size=global_batch_size)
        if base_batch_size is None:
            base_batch_size = self._policy.global_batch_size(self._backend.world_size)
        lr_scale(scaling, base_batch_size, base_batch_size)  # validates base_batch_size
        self._base_batch_size = base_batch_size
        self._scaling = scaling
        self._schedule = schedule if schedule is not None else Schedule("constant", base_lr=lr)
        if isinstance(transition, Transition):
            self._transition = transition
        else:
            self._transition = Transition(transition, ramp_iters=ramp_iters, ramp_per_k=ramp_per_k,
                                          shrink=shrink, momentum_correction=momentum_correction)

        super().__init__(params, optimizer, optimizer_params, kvstore=self._backend.kvstore,
                         compression_params=compression_params, update_on_kvstore=False)

        self.iteration = 0          # optimizer steps taken
        self.progress = 0           # samples trained (sum of global batches)
        self._world_size = None     # world the multiplier was last computed for
        self._last_lr = None        # LR applied at the last step, for the momentum correction
        self._correct_momentum = (self._transition.momentum_correction
                                  and isinstance(self._optimizer, _V_FORM_OPTIMIZERS))
        self._sync_world()
        if all(not p._deferred_init for p in self._params):  # pylint: disable=protected-access
            self._init_eagerly()

    # ----------------------------------------------------------------------------- world and plan
    @property
    def backend(self):
        """The :class:`gluon_elastic.backends.Backend` in use."""
        return self._backend

    @property
    def world_size(self):
        """Number of workers in the current world."""
        return self._backend.world_size

    @property
    def rank(self):
        """Rank of this worker."""
        return self._backend.rank

    @property
    def batch_policy(self):
        """The :class:`gluon_elastic.policy.BatchPolicy` in use."""
        return self._policy

    @property
    def local_batch_size(self):
        """This worker's batch size in the current world."""
        return self._policy.local_batch_size(self.world_size, self.rank)

    @property
    def global_batch_size(self):
        """Global batch size in the current world."""
        return self._policy.global_batch_size(self.world_size)

    @property
    def base_batch_size(self):
        """Global batch size at which the schedule's LR holds."""
        return self._base_batch_size

    @property
    def schedule(self):
        """The base :class:`gluon_elastic.schedule.Schedule`."""
        return self._schedule

    @property
    def transition(self):
        """The :class:`gluon_elastic.policy.Transition` (kind, ramp in force)."""
        return self._transition

    @property
    def in_ramp(self):
        """Whether the next step lies inside a Dynamic SGD ramp."""
        return self._transition.in_ramp(self.iteration)

    @property
    def multiplier(self):
        """LR multiplier of the next step (scaling rule through the transition)."""
        self._sync_world()
        return self._transition.multiplier(self.iteration)

    @property
    def learning_rate(self):
        """LR the next step applies: ``schedule(progress) * multiplier``."""
        return self._schedule(self.progress) * self.multiplier

    def set_learning_rate(self, lr):
        """Set the LR applied from the next step on.

        The base schedule becomes constant at ``lr / multiplier``, so later world changes still
        scale it. Only possible while the schedule is constant.
        """
        if self._schedule.mode != "constant" or self._schedule.warmup_samples > self.progress:
            raise ValueError("set_learning_rate: a %r schedule is attached; change the schedule "
                             "instead" % self._schedule.mode)
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError("learning_rate must be a number >= 0, got %r" % (lr,))
        self._schedule = Schedule("constant", base_lr=lr / self.multiplier)

    def _sync_world(self):
        """Start a transition when the world size differs from the one last seen."""
        world_size = self._backend.world_size
        if world_size == self._world_size:
            return
        target = lr_scale(self._scaling, self._policy.global_batch_size(world_size),
                          self._base_batch_size)
        if self._world_size is None:
            self._transition.reset(target, self.iteration)
        else:
            info = self._transition.change(self.iteration, target)
            base = self._schedule(self.progress)
            logger.info("world change at iteration %d: world %d -> %d, global batch %d -> %d, "
                        "k=%.4g, lr %.6g -> target %.6g, %s", self.iteration, self._world_size,
                        world_size, self._policy.global_batch_size(self._world_size),
                        self._policy.global_batch_size(world_size), info["k"],
                        base * info["from_multiplier"], base * info["target_multiplier"],
                        "ramp over %d iterations" % info["ramp_len"] if info["ramp_len"]
                        else "immediate")
        self._world_size = world_size

    # ------------------------------------------------------------------------------------ step
    def _init_eagerly(self):
        """Create the store, broadcast rank 0's parameters and the optimizer states, then barrier.

        Does nothing once done (every entry point calls it: parameters with deferred shapes
        delay it past the constructor).
        """
        if self._kv_initialized and not self._params_to_init:
            return
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        # Under an elastic driver a worker may be constructed while the others are running:
        # gluon_elastic.state.ElasticState.sync() does the broadcast, no collective runs here.
        collectives = not self._backend.elastic_driver
        if self._kvstore is None and collectives:
            self._backend.broadcast_parameters(self._params)
        self._create_optimizer_states()
        mx.nd.waitall()
        if collectives:
            self._backend.barrier()

    def _init_params(self):
        if not self._distributed:
            return super()._init_params()
        # MXNet 1.9.1's dist KVStore drops the init push of an array that MKLDNN has re-laid out
        # (conv weights after a forward pass: the servers then abort with "init N first"). Pushing
        # a plain copy of rank 0's values avoids it.
        deferred = []
        for param in self._params_to_init:
            if param._deferred_init:  # pylint: disable=protected-access
                deferred.append(param)
                continue
            arrays = param.list_data()
            self._kvstore.broadcast(self._param2idx[param.name], arrays[0].copy(), arrays)
        self._params_to_init = deferred
        return None

    def _create_optimizer_states(self):
        # States exist before the first step so that they can be saved, rescaled and broadcast
        # the same way on every rank, including a worker that joins later.
        for updater, ctx_index in zip(self._updaters, range(len(self._updaters))):
            for index, param in enumerate(self._params):
                if param.grad_req == "null" or index in updater.states:
                    continue
                weight = param.list_data()[ctx_index]
                updater.states[index] = self._optimizer.create_state_multi_precision(index, weight)
                updater.states_synced[index] = True

    def momentum_arrays(self):
        """Momentum buffers of every parameter on every device (empty for momentum-free optimizers)."""
        arrays = []
        for updater in self._updaters:
            for index in sorted(updater.states):
                state = updater.states[index]
                # multi_precision keeps (momentum, fp32 weight); only the momentum holds the LR.
                state = state[0] if isinstance(state, (tuple, list)) else state
                if isinstance(state, mx.nd.NDArray):
                    arrays.append(state)
        return arrays

    def optimizer_state_arrays(self):
        """Every array of the optimizer states (momentum, fp32 master weights, Adam moments...)."""
        arrays = []

        def collect(state):
            if isinstance(state, mx.nd.NDArray):
                arrays.append(state)
            elif isinstance(state, (tuple, list)):
                for part in state:
                    collect(part)

        for updater in self._updaters:
            for index in sorted(updater.states):
                collect(updater.states[index])
        return arrays

    def optimizer_counters(self):
        """The optimizer's update counters (they drive its bias corrections and ``num_update``)."""
        return {"num_update": self._optimizer.num_update,
                "index_update_count": dict(self._optimizer._index_update_count)}  # pylint: disable=protected-access

    def load_optimizer_counters(self, counters):
        """Restore what :meth:`optimizer_counters` returned."""
        self._optimizer.num_update = counters["num_update"]
        self._optimizer._index_update_count = dict(counters["index_update_count"])  # pylint: disable=protected-access

    def _apply_lr(self, lr):
        if self._correct_momentum and self._last_lr is not None and lr != self._last_lr:
            if self._last_lr == 0:
                raise ValueError("momentum correction cannot rescale a buffer built with LR 0 "
                                 "(start the warmup above 0 or disable momentum_correction)")
            ratio = lr / self._last_lr
            for array in self.momentum_arrays():
                array *= ratio
        self._optimizer.lr = lr
        self._last_lr = lr

    def step(self, batch_size=None, ignore_stale_grad=False, global_batch_size=None):
        """One optimizer step on the mean gradient over the global batch.

        Parameters
        ----------
        batch_size : int, optional
            This worker's batch size; checked against the policy's when given. A short last batch
            of an epoch needs ``global_batch_size``.
        ignore_stale_grad : bool
            As for :meth:`mxnet.gluon.Trainer.step`.
        global_batch_size : int, optional
            Samples this step covers over all workers, when it differs from the policy's (the
            tail of an epoch). Every worker must pass the same value.
        """
        self._sync_world()
        if global_batch_size is None:
            expected = self.local_batch_size
            if batch_size is not None and batch_size != expected:
                raise ValueError("batch_size=%r differs from this worker's planned batch %d "
                                 "(world %d, policy %r); pass global_batch_size for a short batch"
                                 % (batch_size, expected, self.world_size, self._policy.name))
            global_batch_size = self.global_batch_size
        elif global_batch_size <= 0:
            raise ValueError("global_batch_size must be > 0, got %r" % (global_batch_size,))
        lr = self.learning_rate
        self._init_eagerly()
        self._apply_lr(lr)
        reduced_over = self.world_size if self._backend.grad_reduction == "mean" else 1
        self._optimizer.rescale_grad = self._scale * reduced_over / global_batch_size
        self._allreduce_grads()
        self._update(ignore_stale_grad)
        self.iteration += 1
        self.progress += global_batch_size

    def allreduce_grads(self):
        """Reduce gradients over devices and workers (see :meth:`mxnet.gluon.Trainer.allreduce_grads`)."""
        self._init_eagerly()
        self._allreduce_grads()

    def _allreduce_grads(self):
        if self._kvstore is None:
            self._backend.allreduce_grads(self._params)
        else:
            super()._allreduce_grads()

    def update(self, batch_size=None, ignore_stale_grad=False, global_batch_size=None):
        """Not supported: the LR and normalisation are set in :meth:`step`; call it instead."""
        raise NotImplementedError("ElasticTrainer.update: call step(), which reduces, normalises "
                                  "by the global batch and sets the LR in one place")

    # ------------------------------------------------------------------------------ save / load
    def elastic_state_dict(self):
        """Elastic state as plain values: progress, iteration, world, transition, last LR."""
        return {"iteration": self.iteration, "progress": self.progress,
                "world_size": self._world_size, "base_batch_size": self._base_batch_size,
                "last_lr": self._last_lr, "transition": self._transition.state_dict()}

    def load_elastic_state_dict(self, state):
        """Restore :meth:`elastic_state_dict`; a different current world starts a transition."""
        self.iteration = int(state["iteration"])
        self.progress = int(state["progress"])
        self._base_batch_size = int(state["base_batch_size"])
        self._last_lr = state["last_lr"]
        self._transition.load_state_dict(state["transition"])
        self._world_size = state["world_size"]
        self._sync_world()

    def states_bytes(self):
        """Optimizer and elastic state, serialised (the payload of :meth:`save_states`)."""
        self._init_eagerly()
        mx.nd.waitall()
        return pickle.dumps(dict({"format": STATE_FORMAT, "version": STATE_VERSION,
                                  "elastic": self.elastic_state_dict(),
                                  "optimizer_states": self._updaters[0].get_states(
                                      dump_optimizer=False)},
                                 **self.optimizer_counters()))

    def load_states_bytes(self, payload, source="<bytes>"):
        """Restore what :meth:`states_bytes` produced."""
        try:
            state = pickle.loads(payload)
        except Exception as err:  # pickle raises several types for damaged input
            raise ValueError("%s is not an ElasticTrainer state: %s" % (source, err)) from err
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("%s is not an ElasticTrainer state (format %r)"
                             % (source, state.get("format") if isinstance(state, dict) else None))
        if state["version"] > STATE_VERSION:
            raise ValueError("%s has state version %r; this gluon_elastic reads up to %d"
                             % (source, state["version"], STATE_VERSION))
        self._init_eagerly()
        for updater in self._updaters:
            updater.set_states(state["optimizer_states"])
        self.load_optimizer_counters(state)
        self.load_elastic_state_dict(state["elastic"])

    def save_states(self, fname):
        """Save optimizer states and the elastic state to ``fname``."""
        payload = self.states_bytes()
        with open(fname, "wb") as fout:
            fout.write(payload)

    def load_states(self, fname):
        """Load what :meth:`save_states` wrote."""
        with open(fname, "rb") as fin:
            self.load_states_bytes(fin.read(), source=fname)
