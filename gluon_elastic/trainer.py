"""ElasticTrainer: a ``gluon.Trainer`` whose batch size and learning rate follow the world size.

How it differs from :class:`mxnet.gluon.Trainer` (everything else is Gluon's own code path):

1. The applied update is the mean gradient over the *global* batch on every backend. The backend
   says whether its reduction returns the sum or the mean over workers, and the trainer sets
   ``rescale_grad`` from that and the global batch size of the current world, in one place.
   :meth:`step` therefore needs no batch size; ``step(batch_size)`` checks the given size against
   the plan, and ``step(0, global_batch_size=...)`` lets a rank without samples take part with a
   zero gradient.
2. The LR is set before every update to ``schedule(progress) * multiplier(iteration)``: the base
   schedule is a function of samples trained, the multiplier follows the scaling rule at the
   current global batch, through the configured transition (Dynamic SGD ramp by default). An MXNet
   ``lr_scheduler`` is refused; :meth:`set_learning_rate` works while the schedule is constant.
3. With ``momentum_correction`` (the default), the momentum buffers of ``sgd`` and ``nag`` are
   multiplied by ``lr_t / lr_{t-1}`` whenever the LR changes, so MXNet's v-form update (LR inside
   the buffer) follows the paper's u-form equations exactly, steps at LR 0 included
   (:mod:`gluon_elastic.optimizers`).
4. ``nag`` runs a corrected update (MXNet 1.9.1's kernel takes the momentum's weight-decay term
   from the already-updated weight), at the cost of the fused kernel.
5. Updates run on the workers (``update_on_kvstore=False``; True is refused, and so are
   ``row_sparse`` weights and gradients, which need updates on the store). A distributed
   KVStore is initialised eagerly, rank 0's values are broadcast, and a barrier follows.
6. :meth:`allreduce_grads` leaves the mean gradient over the global batch in the gradients (so a
   global-norm clip threshold means the same at every world size); :meth:`update` then applies
   it with the same LR, momentum correction and counters as :meth:`step`.
7. :meth:`save_states` writes MXNet's own ``.states`` layout (``(states, optimizer)``) with the
   elastic state (progress, iteration, world, transition) attached to the optimizer: a plain
   ``gluon.Trainer`` loads it with its momentum and counters; :meth:`load_states` reads Gluon's
   files too and starts the elastic state fresh.
8. Parameters may live on several devices of the process (GluonCV's multi-GPU layout,
   :mod:`gluon_elastic.devices`): the gradient of the process is the sum over its devices, reduced
   over the workers (a KVStore's push of every device's copy, or the backend's
   ``allreduce_grads``), and every device receives it and applies the same update, so the copies
   stay identical. Optimizer counters are kept alike on every device, whatever device ids a
   states file was written on.
"""
import copy
import logging
import pickle

import mxnet as mx
import numpy as np
from mxnet import gluon

from . import backends as _backends
from .optimizers import (V_FORM_OPTIMIZERS, ElasticNAG, ElasticSGD, device_sum,
                         elastic_optimizer, portable_copy, scale_arrays, sum_of_squares)
from .policy import AdaScale, BatchPolicy, Transition, lr_scale, SCALING_RULES
from .schedule import Schedule

__all__ = ["ElasticTrainer", "describe_states", "STATE_FORMAT", "STATE_VERSION"]

logger = logging.getLogger("gluon_elastic")

STATE_FORMAT = "gluon_elastic.ElasticTrainer"
# 1: a pickled dict of our own; 2: MXNet's (states, optimizer) with the elastic state attached.
STATE_VERSION = 2
# Attribute of the saved optimizer that carries the elastic state (plain MXNet ignores it).
STATE_ATTRIBUTE = "gluon_elastic"


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
        Ramp length ``T`` (iterations, ``'auto'`` to derive it from the optimizer's momentum, or
        per unit of ``k``) and shrink behaviour of ``dynamic``; see
        :class:`gluon_elastic.policy.Transition`.
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
        optimizer, optimizer_params = elastic_optimizer(optimizer, optimizer_params)

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
            # ramp_iters='auto' derives T from the optimizer's momentum coefficient.
            momentum = (getattr(optimizer, "momentum", None) if not isinstance(optimizer, str)
                        else (optimizer_params or {}).get("momentum"))
            self._transition = Transition(transition, ramp_iters=ramp_iters, ramp_per_k=ramp_per_k,
                                          shrink=shrink, momentum_correction=momentum_correction,
                                          momentum=momentum if ramp_iters == "auto" else None)

        super().__init__(params, optimizer, optimizer_params, kvstore=self._backend.kvstore,
                         compression_params=compression_params, update_on_kvstore=False)
        for param in self._params:
            if param._stype != "default" or param._grad_stype != "default":  # pylint: disable=protected-access
                raise ValueError(
                    "parameter %s is row_sparse (weight %s, gradient %s): ElasticTrainer runs "
                    "the updates on the workers, where the LR follows the world, and sparse "
                    "weights and gradients need updates on the KVStore; use dense parameters "
                    "or gluon.Trainer" % (param.name, param._stype, param._grad_stype))  # pylint: disable=protected-access

        self.iteration = 0          # optimizer steps taken
        self.progress = 0           # samples trained (sum of global batches)
        # Where the base schedule stands, in samples: the samples trained, except under AdaScale,
        # whose steps advance it by gain * base_batch_size (scale-invariant progress).
        self.schedule_progress = 0
        self._adascale = AdaScale(self._base_batch_size) if scaling == "adascale" else None
        self._world_size = None     # world the multiplier was last computed for
        # LR scale of the v-form momentum buffers (v = -buffer_lr * u): the LR of the last step
        # above 0. None until a step has run.
        self._buffer_lr = None
        # The LR the last step applied (optimizer.lr holds the buffers' scale at a step at LR 0).
        self.last_lr = None
        # (batch_size given, global batch) of an allreduce_grads() waiting for its update().
        self._reduced = None
        self._correct_momentum = (self._transition.momentum_correction
                                  and isinstance(self._optimizer, V_FORM_OPTIMIZERS))
        self._u_form_optimizer = isinstance(self._optimizer, (ElasticSGD, ElasticNAG))
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
        """LR multiplier of the next step (scaling rule through the transition).

        Under AdaScale the transition carries the scale ``S`` (ramped after a change with
        ``transition='dynamic'``) and the multiplier is the gain at that scale.
        """
        self._sync_world()
        multiplier = self._transition.multiplier(self.iteration)
        if self._adascale is not None:
            return self._adascale.gain(multiplier)
        return multiplier

    @property
    def scaling(self):
        """The scaling rule: ``'none'``, ``'linear'``, ``'sqrt'`` or ``'adascale'``."""
        return self._scaling

    @property
    def adascale(self):
        """The :class:`gluon_elastic.policy.AdaScale` estimator (None for other rules)."""
        return self._adascale

    @property
    def learning_rate(self):
        """LR the next step applies: ``schedule(schedule_progress) * multiplier``."""
        return self._schedule(self.schedule_progress) * self.multiplier

    def set_learning_rate(self, lr):
        """Set the LR applied from the next step on.

        The base schedule becomes constant at ``lr / multiplier``, so later world changes still
        scale it. Only possible while the schedule is constant.
        """
        if self._schedule.mode != "constant" or \
                self._schedule.warmup_samples > self.schedule_progress:
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
            base = self._schedule(self.schedule_progress)
            if self._adascale is not None:  # the transition moves the scale; the LR follows the gain
                info = dict(info, from_multiplier=self._adascale.gain(info["from_multiplier"]),
                            target_multiplier=self._adascale.gain(info["target_multiplier"]))
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

    def momentum_arrays(self, indices=None):
        """Momentum buffers of every parameter (or of ``indices``) on every device.

        Empty for momentum-free optimizers.
        """
        arrays = []
        for updater in self._updaters:
            for index in sorted(updater.states):
                if indices is not None and index not in indices:
                    continue
                state = updater.states[index]
                # multi_precision keeps (momentum, fp32 weight); only the momentum holds the LR.
                state = state[0] if isinstance(state, (tuple, list)) else state
                if isinstance(state, mx.nd.NDArray):
                    arrays.append(state)
        return arrays

    def optimizer_state_arrays(self, first_device=False):
        """Every array of the optimizer states (momentum, fp32 master weights, Adam moments...).

        Parameters
        ----------
        first_device : bool
            Only the first device's (each device holds the same values); default every device's,
            one device after the other.
        """
        arrays = []

        def collect(state):
            if isinstance(state, mx.nd.NDArray):
                arrays.append(state)
            elif isinstance(state, (tuple, list)):
                for part in state:
                    collect(part)

        for updater in self._updaters[:1] if first_device else self._updaters:
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
        self._set_update_counts(counters["index_update_count"])

    def _set_update_counts(self, index_update_count):
        """Give every device of this process the same update counters.

        MXNet keeps the counters per device id and each device's updater selects its own before
        updating; setting only the current one would be undone at the next update, and a file
        from another layout (other device ids) would leave this process's devices at 0.
        """
        counts = {ctx.device_id: dict(index_update_count) for ctx in self._contexts}
        self._optimizer._all_index_update_counts = counts  # pylint: disable=protected-access
        self._optimizer._index_update_count = counts[self._contexts[0].device_id]  # pylint: disable=protected-access

    def _apply_lr(self, lr):
        """Set the LR of the next update; with momentum correction, keep the buffers in u-form.

        Returns the factor by which the momentum buffers must be multiplied before the update
        (``lr_t / lr_{t-1}``; 1 when the LR did not change).
        """
        self.last_lr = lr
        if not self._correct_momentum:
            self._optimizer.lr = lr
            return 1.0
        scale = 1.0
        if lr > 0:
            if self._buffer_lr is not None and lr != self._buffer_lr:
                scale = lr / self._buffer_lr
            self._buffer_lr = lr
        else:
            if not self._u_form_optimizer:
                raise ValueError("a step at LR 0 with momentum correction needs gluon_elastic's "
                                 "sgd or nag (got %s); start the schedule above 0 or pass "
                                 "momentum_correction=False" % type(self._optimizer).__name__)
            if self._buffer_lr is None:
                self._buffer_lr = 1.0  # any scale > 0: the buffers are rescaled when LR > 0
        # At LR 0 the optimizer keeps the weights and accumulates the buffers at their scale.
        self._optimizer.lr = self._buffer_lr
        if self._u_form_optimizer:
            self._optimizer.zero_lr_step = lr == 0
        return scale

    def _begin_step(self, batch_size, global_batch_size):
        """Checks and set-up shared by :meth:`step` and :meth:`allreduce_grads`.

        Returns the global batch size of the step.
        """
        if self._reduced is not None:
            raise ValueError("allreduce_grads() was called and its update() has not run yet")
        self._sync_world()
        if global_batch_size is None:
            expected = self.local_batch_size
            if batch_size is not None and batch_size != expected:
                raise ValueError("batch_size=%r differs from this worker's planned batch %d "
                                 "(world %d, policy %r); pass global_batch_size for a short batch"
                                 % (batch_size, expected, self.world_size, self._policy.name))
            global_batch_size = self.global_batch_size
        elif isinstance(global_batch_size, bool) or global_batch_size <= 0:
            raise ValueError("global_batch_size must be > 0, got %r" % (global_batch_size,))
        elif batch_size is not None and not 0 <= batch_size <= global_batch_size:
            raise ValueError("batch_size=%r must lie between 0 and global_batch_size=%r"
                             % (batch_size, global_batch_size))
        self._init_eagerly()
        if batch_size == 0:
            self._zero_grads()
        return global_batch_size

    def _zero_grads(self):
        """This rank had no samples: it contributes a zero gradient, which counts as fresh."""
        for param in self._params:
            if param.grad_req == "null":
                continue
            for grad in param.list_grad():
                grad[:] = 0
            for data in param.list_data():
                data._fresh_grad = True  # pylint: disable=protected-access

    def _reduced_over(self):
        """Workers whose gradients the reduction averaged (1 when it sums)."""
        return self.world_size if self._backend.grad_reduction == "mean" else 1

    def _finish_step(self, rescale_grad, ignore_stale_grad, global_batch_size):
        scale = self._apply_lr(self.learning_rate)
        self._optimizer.rescale_grad = rescale_grad
        if scale == 1.0:
            self._update(ignore_stale_grad)
        elif not self._u_form_optimizer:
            scale_arrays(self.momentum_arrays(), scale)
            self._update(ignore_stale_grad)
        else:
            # The optimizer folds the rescale into its update kernels; the buffers of parameters
            # that the update skips (stale gradients) are rescaled here.
            skipped = self._stale_params() if ignore_stale_grad else []
            self._optimizer.momentum_scale = scale
            try:
                self._update(ignore_stale_grad)
            finally:
                self._optimizer.momentum_scale = 1.0
            if skipped:
                scale_arrays(self.momentum_arrays(skipped), scale)
        if self._adascale is not None:
            self.schedule_progress += self.multiplier * self._base_batch_size
        else:
            self.schedule_progress += global_batch_size
        self.iteration += 1
        self.progress += global_batch_size

    def _stale_params(self):
        """Indices of the parameters whose gradient ``backward`` has not refreshed."""
        return [index for index, param in enumerate(self._params) if param.grad_req != "null"
                and not all(data._fresh_grad for data in param.list_data())]  # pylint: disable=protected-access

    def step(self, batch_size=None, ignore_stale_grad=False, global_batch_size=None,
             worker_noise=None):
        """One optimizer step on the mean gradient over the global batch.

        Parameters
        ----------
        batch_size : int, optional
            This worker's batch size. Without ``global_batch_size`` it is checked against the
            policy's plan. With it, it may be anything from 0 to ``global_batch_size``; 0 means
            this rank had no samples (the tail of an epoch): its gradients are set to zero and it
            takes part in the reduction, so run no forward/backward for it.
        ignore_stale_grad : bool
            As for :meth:`mxnet.gluon.Trainer.step`.
        global_batch_size : int, optional
            Samples this step covers over all workers, when it differs from the policy's (the
            tail of an epoch). Every worker must pass the same value.
        worker_noise : (float, int), optional
            AdaScale with emulated workers only: ``(sum over the virtual workers of |G_i|^2 /
            b_i, number of virtual workers with samples)``, as
            :meth:`gluon_elastic.emulate.EmulatedWorkers.forward_backward` measures it. Real
            workers measure their own gradients.
        """
        global_batch_size = self._begin_step(batch_size, global_batch_size)
        local_noise = self._local_noise(batch_size, worker_noise)
        self._allreduce_grads()
        self._observe_noise(local_noise, global_batch_size)
        self._finish_step(self._scale * self._reduced_over() / global_batch_size,
                          ignore_stale_grad, global_batch_size)

    def _local_noise(self, batch_size, worker_noise):
        """AdaScale: this worker's ``|G_i|^2 / b_i`` and whether it had samples (before reduction).

        Returns a numpy vector ``[value, 1 or 0]`` to be summed over the workers, or None when
        AdaScale is off. ``worker_noise`` (emulated workers) is already the sum.
        """
        if self._adascale is None:
            return None
        if worker_noise is not None:
            if self.world_size > 1 and not isinstance(self._backend, _backends.LocalBackend):
                raise ValueError("worker_noise is for emulated workers; real workers of a %s "
                                 "group measure their own gradients" % self._backend.name)
            return np.array([float(worker_noise[0]), float(worker_noise[1])])
        if isinstance(self._backend, _backends.LocalBackend) and self.world_size > 1:
            raise ValueError("AdaScale with %d emulated workers needs worker_noise=(sum of "
                             "|G_i|^2 / b_i, workers) from EmulatedWorkers.forward_backward("
                             "..., batch_sizes=...)" % self.world_size)
        if self.world_size == 1:
            return None  # one worker cannot tell noise from signal: nothing to measure
        local_batch_size = self.local_batch_size if batch_size is None else batch_size
        if local_batch_size == 0:
            return np.zeros(2)
        return np.array([_squared_norm(self._params) / local_batch_size, 1.0])

    def _observe_noise(self, local_noise, global_batch_size):
        """AdaScale: one scalar reduction, then this step's estimates into the smoothed gain."""
        if local_noise is None:
            return
        # Emulated workers' noise is already the sum (LocalBackend returns it as it is).
        local_noise = self._backend.sum_over_workers(local_noise)
        worker_sqnorm_sum, workers = float(local_noise[0]), int(round(local_noise[1]))
        if workers < 2:
            return  # no estimate from one worker with samples: skip the reduced norm's read
        # After the reduction the gradients hold the sum over workers, or their mean.
        reduced_sqnorm = _squared_norm(self._params, per_device=False) * self._reduced_over() ** 2
        self._sync_world()
        self._adascale.observe(worker_sqnorm_sum, reduced_sqnorm, global_batch_size, workers,
                               scale=self._transition.multiplier(self.iteration))

    def allreduce_grads(self, batch_size=None, global_batch_size=None):
        """Reduce gradients over devices and workers, leaving their mean over the global batch.

        After this call every gradient holds the mean over the global batch of the step (the
        gradient :meth:`step` would apply, before weight decay), whatever the world size, so a
        clip by global norm in between means the same at every world size. Then call
        :meth:`update`. Arguments as for :meth:`step`.
        """
        global_batch_size = self._begin_step(batch_size, global_batch_size)
        local_noise = self._local_noise(batch_size, None)
        self._allreduce_grads()
        self._observe_noise(local_noise, global_batch_size)
        factor = self._reduced_over() / global_batch_size
        if factor != 1:
            scale_arrays([grad for param in self._params if param.grad_req != "null"
                          for grad in param.list_grad()], factor)
        self._reduced = (batch_size, global_batch_size)

    def _allreduce_grads(self):
        if self._kvstore is None:
            self._backend.allreduce_grads(self._params)
        else:
            super()._allreduce_grads()

    def update(self, batch_size=None, ignore_stale_grad=False, global_batch_size=None):
        """Apply the gradients :meth:`allreduce_grads` reduced: one optimizer step.

        The LR, the momentum correction and the counters are those of :meth:`step`; the
        gradients are taken as they are (already the mean over the global batch, clipped or
        otherwise changed by the caller).

        Parameters
        ----------
        batch_size : int, optional
            Checked against the size given to (or planned at) :meth:`allreduce_grads`.
        ignore_stale_grad : bool
            As for :meth:`mxnet.gluon.Trainer.update`.
        global_batch_size : int, optional
            Checked against the one :meth:`allreduce_grads` used.
        """
        if self._reduced is None:
            raise ValueError("update() applies the gradients that allreduce_grads() reduced: "
                             "call allreduce_grads() first, or step()")
        reduced_batch_size, reduced_global = self._reduced
        self._reduced = None
        if global_batch_size is not None and global_batch_size != reduced_global:
            raise ValueError("update(global_batch_size=%r) differs from the %d samples that "
                             "allreduce_grads() normalised by" % (global_batch_size, reduced_global))
        if batch_size is not None:
            expected = (reduced_batch_size if reduced_batch_size is not None
                        else self.local_batch_size)
            if batch_size != expected:
                raise ValueError("update(batch_size=%r) differs from allreduce_grads()'s batch "
                                 "of %d on this worker" % (batch_size, expected))
        self._finish_step(self._scale, ignore_stale_grad, reduced_global)

    # ------------------------------------------------------------------------------ save / load
    def elastic_state_dict(self):
        """Elastic state as plain values: progress, iteration, world, transition, buffer LR."""
        return {"iteration": self.iteration, "progress": self.progress,
                "schedule_progress": self.schedule_progress,
                "world_size": self._world_size, "base_batch_size": self._base_batch_size,
                "buffer_lr": self._buffer_lr, "transition": self._transition.state_dict(),
                "adascale": self._adascale.state_dict() if self._adascale else None}

    def load_elastic_state_dict(self, state):
        """Restore :meth:`elastic_state_dict`; a different current world starts a transition."""
        self.iteration = int(state["iteration"])
        self.progress = int(state["progress"])
        self.schedule_progress = state.get("schedule_progress", self.progress)
        self._base_batch_size = int(state["base_batch_size"])
        if self._adascale is not None:
            self._adascale.base_batch_size = self._base_batch_size
            if state.get("adascale"):
                self._adascale.load_state_dict(state["adascale"])
        # Version 1 called it the LR of the last step (identical unless that step ran at LR 0).
        self._buffer_lr = state["buffer_lr"] if "buffer_lr" in state else state["last_lr"]
        self._transition.load_state_dict(state["transition"])
        self._world_size = state["world_size"]
        self._sync_world()

    def states_bytes(self, states=None, optimizer=None):
        """Optimizer and elastic state, serialised (the payload of :meth:`save_states`).

        The layout is MXNet's ``(updater states, optimizer)`` pickle, with the optimizer of
        MXNet's own class and the elastic state in its attribute ``gluon_elastic``.

        Parameters
        ----------
        states : dict, optional
            Stand-ins for the first device's updater states (:meth:`first_device_states`), e.g.
            host copies taken at a commit; default the live states, read after a flush.
        optimizer : mxnet.optimizer.Optimizer, optional
            What :meth:`portable_optimizer` returned when ``states`` were taken; default now.
        """
        self._init_eagerly()
        if states is None:
            mx.nd.waitall()
            states = self._updaters[0].states
        if optimizer is None:
            optimizer = self.portable_optimizer()
        return pickle.dumps((states, optimizer))

    def first_device_states(self):
        """The first device's optimizer states, ``{parameter index: array or tuple of arrays}``.

        Every device holds the same values (they apply the same update); a states file keeps
        one copy, which :meth:`load_states_bytes` gives to every device.
        """
        self._init_eagerly()
        return self._updaters[0].states

    def portable_optimizer(self):
        """The optimizer as :meth:`states_bytes` saves it, detached from later steps.

        A copy of MXNet's own class carrying the elastic state (attribute ``gluon_elastic``)
        and its own copies of the update counters, so it can be serialised later (in a
        background thread) with the values of this moment.
        """
        optimizer = portable_copy(self._optimizer)
        # pylint: disable=protected-access
        optimizer._all_index_update_counts = {
            device: dict(counts) for device, counts in self._optimizer._all_index_update_counts.items()}
        optimizer._index_update_count = optimizer._all_index_update_counts.get(
            self._contexts[0].device_id, dict(self._optimizer._index_update_count))
        # pylint: enable=protected-access
        setattr(optimizer, STATE_ATTRIBUTE, {"format": STATE_FORMAT, "version": STATE_VERSION,
                                             "elastic": copy.deepcopy(self.elastic_state_dict())})
        return optimizer

    def load_states_bytes(self, payload, source="<bytes>", iteration=None, progress=None):
        """Restore what :meth:`states_bytes` or :meth:`mxnet.gluon.Trainer.save_states` produced.

        Parameters
        ----------
        payload : bytes
        source : str
            Named in errors.
        iteration, progress : int, optional
            Where training stands, for a file without elastic state (written by
            ``gluon.Trainer``); default 0. Refused for a file that has its own.
        """
        try:
            content = pickle.loads(payload)
        except Exception as err:  # pickle raises several types for damaged input
            raise ValueError("%s is not a trainer states file: %s" % (source, err)) from err
        states, file_optimizer, elastic, counters = _parse_states(content, source)
        if elastic is not None and (iteration is not None or progress is not None):
            raise ValueError("%s carries its own iteration and progress; iteration= and "
                             "progress= are for files written by gluon.Trainer" % source)
        self._init_eagerly()
        merged = dict(self._updaters[0].states)
        for index, state in states.items():
            _check_state(index, state, merged, self._params, source)
            merged[index] = state
        for position, updater in enumerate(self._updaters):
            # Each device gets its own copy; the updater moves it to its context on first use.
            updater.states = merged if position == 0 else pickle.loads(pickle.dumps(merged))
            updater.states_synced = dict.fromkeys(updater.states, False)
        if file_optimizer is not None:
            self._optimizer.num_update = file_optimizer.num_update
            # The file's devices updated alike: the highest count of each parameter stands for
            # all of them, whatever device ids the file was written on.
            merged_counts = {}
            for counts in file_optimizer._all_index_update_counts.values():  # pylint: disable=protected-access
                for index, count in counts.items():
                    merged_counts[index] = max(count, merged_counts.get(index, count))
            self._set_update_counts(merged_counts)
        elif counters is not None:
            self.load_optimizer_counters(counters)
        if elastic is not None:
            self.load_elastic_state_dict(elastic)
            return
        # A Gluon file: optimizer state only. Its v-form buffers were built at its LR.
        self.iteration = int(iteration or 0)
        self.progress = self.schedule_progress = int(progress or 0)
        file_lr = file_optimizer.learning_rate if file_optimizer is not None else None
        self._buffer_lr = file_lr if file_lr else None
        self._world_size = None
        self._sync_world()

    def save_states(self, fname):
        """Save optimizer states and the elastic state to ``fname``.

        ``gluon.Trainer.load_states`` reads the file too (momentum, counters, the LR of the last
        step); it ignores the elastic state.
        """
        payload = self.states_bytes()
        with open(fname, "wb") as fout:
            fout.write(payload)

    def load_states(self, fname, iteration=None, progress=None):
        """Load a file of :meth:`save_states` or of ``gluon.Trainer.save_states``.

        A Gluon file gives the optimizer state (momentum, counters); the elastic state starts
        fresh at ``iteration`` and ``progress`` (default 0) in the current world.
        """
        with open(fname, "rb") as fin:
            self.load_states_bytes(fin.read(), source=fname, iteration=iteration,
                                   progress=progress)


def _parse_states(content, source):
    """``(states, optimizer or None, elastic state or None, counters or None)`` of a states file."""
    if isinstance(content, dict) and content.get("format") == STATE_FORMAT:
        # Version 1: a dict of our own around Gluon's states pickle.
        if content.get("version") != 1:
            raise ValueError("%s has state version %r; this gluon_elastic reads up to %d"
                             % (source, content.get("version"), STATE_VERSION))
        return pickle.loads(content["optimizer_states"]), None, content["elastic"], content
    if isinstance(content, tuple) and len(content) == 2 \
            and isinstance(content[1], mx.optimizer.Optimizer):
        states, optimizer = content
        meta = getattr(optimizer, STATE_ATTRIBUTE, None)
        if meta is None:
            elastic = None
        elif meta.get("format") != STATE_FORMAT or meta.get("version", 0) > STATE_VERSION:
            raise ValueError("%s has state version %r; this gluon_elastic reads up to %d"
                             % (source, meta.get("version"), STATE_VERSION))
        else:
            elastic = meta["elastic"]
    elif isinstance(content, dict):  # gluon.Trainer without the optimizer (dump_optimizer=False)
        states, optimizer, elastic = content, None, None
    else:
        raise ValueError("%s is not a trainer states file (a pickled %s)"
                         % (source, type(content).__name__))
    if not isinstance(states, dict) or not all(isinstance(key, int) for key in states):
        raise ValueError("%s is not a trainer states file: its states are not indexed by "
                         "parameter" % source)
    return states, optimizer, elastic, None


def describe_states(payload):
    """The elastic state and last LR of a :meth:`ElasticTrainer.states_bytes` payload.

    Returns
    -------
    dict
        The :meth:`ElasticTrainer.elastic_state_dict` values (``iteration``, ``progress``,
        ``world_size``...) and ``lr``, the LR of the last step (None in version-1 payloads).
    """
    states, optimizer, elastic, _ = _parse_states(pickle.loads(payload), "<payload>")
    if elastic is None:
        raise ValueError("the payload holds no elastic state (a gluon.Trainer file)")
    del states
    return dict(elastic, lr=optimizer.lr if optimizer is not None else None)


def _state_shapes(state):
    if isinstance(state, mx.nd.NDArray):
        return [state.shape]
    if isinstance(state, (tuple, list)):
        return [shape for part in state for shape in _state_shapes(part)]
    return []


def _check_state(index, state, current, params, source):
    """Refuse a loaded optimizer state that does not fit parameter ``index``."""
    if index not in current or not 0 <= index < len(params):
        raise ValueError("%s holds optimizer state for parameter %d, which this trainer does not "
                         "update" % (source, index))
    if _state_shapes(state) != _state_shapes(current[index]):
        raise ValueError("%s: optimizer state of parameter %s has shapes %s, expected %s (another "
                         "model or optimizer?)" % (source, params[index].name,
                                                   _state_shapes(state),
                                                   _state_shapes(current[index])))


def _squared_norm(params, per_device=True):
    """Squared L2 norm of the gradients of ``params`` (a Python float; waits for them).

    ``per_device``: the gradient of this worker is the sum over its devices (before the
    reduction); otherwise every device holds the same reduced gradient and the first is read.
    """
    grads = []
    for param in params:
        if param.grad_req == "null":
            continue
        copies = param.list_grad()
        grads.append(device_sum(copies) if per_device else copies[0])
    return sum_of_squares(grads)

