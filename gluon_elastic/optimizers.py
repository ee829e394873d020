"""Momentum optimizers whose buffers follow the paper's u-form equations exactly.

MXNet's ``sgd`` and ``nag`` keep the LR inside the momentum buffer (v-form, ``v = -lr * u``).
:class:`gluon_elastic.ElasticTrainer` rescales the buffer by ``lr_t / lr_{t-1}`` whenever the LR
changes, which makes the v-form trajectory equal the u-form one (Eq. 3 of Lin et al.). Three
things need the optimizer's help, and the classes here give it:

1. **A step at LR 0** (warmup from 0, a schedule that ends at 0). In u-form nothing is special:
   ``u <- mu * u + g'`` and the weight stays. In v-form the buffer would lose ``u`` (``v = 0 * u``).
   With ``zero_lr_step`` set, the optimizer keeps the weight and accumulates the buffer at the
   scale ``lr`` it was last built with (the trainer sets ``lr`` to that scale and the flag on), so
   the next LR above 0 rescales it exactly as u-form would.
2. **Nesterov with weight decay.** MXNet 1.9.1's ``nag_mom_update`` and ``mp_nag_mom_update``
   write the new weight in place and then read it for the weight-decay term of the momentum:
   ``v <- mu * v - lr * (g + wd * w_new)``. :class:`ElasticNAG` runs its own kernel
   (:mod:`gluon_elastic.kernels`, compiled on first use), which reads every input once:

       v <- mu * v - lr * (g + wd * w) ;  w <- w + mu * v - lr * (g + wd * w)

   for a group of parameters per call, float32 and float16 with fp32 master weights, clipped
   gradients included; on CPU it costs less than MXNet's own kernel. Where the kernel cannot run
   (GPU arrays, no compiler) the same update takes three kernels: the decay moves out of MXNet's
   (``v <- v - (lr * wd / mu) * w``, ``w <- (1 - lr * wd) * w``), then MXNet's with ``wd = 0``.
3. **A changed LR.** ``momentum_scale`` multiplies the buffers by ``lr_t / lr_{t-1}`` inside the
   update (the momentum coefficient of the kernels becomes ``mu * scale``), so a ramp or a cosine
   schedule costs no extra pass over the buffers.

Both pickle as MXNet's own classes (:func:`portable_copy`), so a ``.states`` file written by the
trainer loads into a plain ``gluon.Trainer``.
"""
import copy

import mxnet as mx
import numpy as np

from . import kernels

__all__ = ["ElasticSGD", "ElasticNAG", "elastic_optimizer", "portable_copy", "scale_arrays",
           "sum_of_squares", "device_sum", "V_FORM_OPTIMIZERS"]

# Largest number of arrays one multi-tensor kernel (multi_sgd_update) takes in MXNet 1.9.1.
_MULTI_TENSOR_LIMIT = 60


def _as_lists(index, weight, grad, state):
    if isinstance(index, (list, tuple)):
        return list(index), list(weight), list(grad), list(state)
    return [index], [weight], [grad], [state]


def _split_state(state):
    """``(momentum, fp32 master weight or None)`` of an sgd/nag state, multi-precision or not."""
    if isinstance(state, (tuple, list)):
        return state[0], state[1]
    return state, None


def _multi_axpy(targets, sources, coefficients):
    """``target <- target - coefficient * source`` for every triple, in multi-tensor kernels.

    ``multi_sgd_update`` computes ``w <- w - lr * (rescale * g + wd * w)``; with ``wd = 0`` and
    ``rescale = 1`` it is an in-place scaled subtraction (a source may be its own target).
    """
    for begin in range(0, len(targets), _MULTI_TENSOR_LIMIT):
        end = begin + _MULTI_TENSOR_LIMIT
        chunk = list(zip(targets[begin:end], sources[begin:end]))
        arrays = [array for pair in chunk for array in pair]
        count = len(chunk)
        mx.nd.multi_sgd_update(*arrays, lrs=tuple(coefficients[begin:end]),
                               wds=(0.0,) * count, rescale_grad=1.0, num_weights=count,
                               out=[target for target, _ in chunk])


def sum_of_squares(arrays):
    """``sum |a|^2`` over ``arrays`` as a Python float: multi-tensor kernels, one read at the end."""
    total = []
    for begin in range(0, len(arrays), _MULTI_TENSOR_LIMIT):
        chunk = [a.astype("float32", copy=False) for a in arrays[begin:begin + _MULTI_TENSOR_LIMIT]]
        total.append(mx.nd.multi_sum_sq(*chunk, num_arrays=len(chunk)).sum())
    return float(mx.nd.add_n(*total).asscalar()) if total else 0.0


def device_sum(arrays):
    """Sum of one parameter's copies on several devices (a gradient per device), on the first."""
    if len(arrays) == 1:
        return arrays[0]
    return mx.nd.add_n(*[array.as_in_context(arrays[0].context) for array in arrays])


def scale_arrays(arrays, factor):
    """Multiply every array in place by ``factor``."""
    for array in arrays:
        array *= factor


class _UForm:
    """Mixin: the two hooks through which the trainer keeps v-form buffers in u-form.

    ``momentum_scale``: multiply every momentum buffer by this before the step (the correction
    ``lr_t / lr_{t-1}`` of a changed LR), folded into the update kernels' momentum coefficient, so
    it costs no extra pass over the buffers. The trainer sets it before an update and resets it.

    ``zero_lr_step``: keep the weights and accumulate the momentum buffers at the scale ``lr``
    (times each parameter's ``lr_mult``), i.e. ``v <- mu * v - lr * (clip(rescale * g) + wd * w)``,
    which in u-form is ``u <- mu * u + g'`` at LR 0.
    """

    zero_lr_step = False
    momentum_scale = 1.0

    def _momentum_only(self, indices, weights, grads, states):
        self._update_count(indices)
        lrs = self._get_lrs(indices)
        wds = self._get_wds(indices)
        for weight, grad, state, lr, wd in zip(weights, grads, states, lrs, wds):
            momentum, master = _split_state(state)
            if momentum is None:  # plain SGD: nothing is kept between steps
                continue
            weight = master if master is not None else weight
            grad = grad.astype(weight.dtype, copy=False) * self.rescale_grad
            if self.clip_gradient is not None:
                grad = mx.nd.clip(grad, -self.clip_gradient, self.clip_gradient)
            momentum[:] = (self.momentum * self.momentum_scale) * momentum - lr * (grad + wd * weight)


class ElasticSGD(_UForm, mx.optimizer.SGD):
    """MXNet's ``sgd`` (fused multi-tensor kernels and all) with a u-form step at LR 0."""

    def update_multi_precision(self, index, weight, grad, state):
        if self.zero_lr_step:
            return self._momentum_only(*_as_lists(index, weight, grad, state))
        if self.momentum_scale == 1.0:
            return super().update_multi_precision(index, weight, grad, state)
        # v <- mu * (s * v) - lr * g' is the stock update with the coefficient mu * s.
        momentum = self.momentum
        self.momentum = momentum * self.momentum_scale
        try:
            return super().update_multi_precision(index, weight, grad, state)
        finally:
            self.momentum = momentum


class ElasticNAG(_UForm, mx.optimizer.NAG):
    """Nesterov momentum, v-form, with the weight-decay term taken from the weight before the step.

    ``g' = clip(rescale_grad * g) + wd * w``;  ``v <- mu * v - lr * g'``;
    ``w <- w + mu * v - lr * g'``, i.e. the u-form ``u <- mu * u + g'``;
    ``w <- w - lr * (g' + mu * u)`` with ``v = -lr * u``.
    """

    def __init__(self, momentum=0.0, **kwargs):
        super().__init__(momentum=momentum, **kwargs)
        # The Updater hands over up to this many parameters of one dtype per call: one kernel
        # call updates them all.
        self.aggregate_num = _MULTI_TENSOR_LIMIT

    def update(self, index, weight, grad, state):
        self.update_multi_precision(index, weight, grad, state)

    def update_multi_precision(self, index, weight, grad, state):
        indices, weights, grads, states = _as_lists(index, weight, grad, state)
        if self.zero_lr_step:
            return self._momentum_only(indices, weights, grads, states)
        self._update_count(indices)
        lrs = self._get_lrs(indices)
        wds = self._get_wds(indices)
        fallback, compiled = [], {}
        for weight, grad, state, lr, wd in zip(weights, grads, states, lrs, wds):
            momentum, master = _split_state(state)
            if momentum is None:  # no momentum: plain SGD, whose kernels read the weight once
                kwargs = {"rescale_grad": self.rescale_grad, "lr": lr, "wd": wd}
                if self.clip_gradient:
                    kwargs["clip_gradient"] = self.clip_gradient
                if master is None:
                    mx.nd.sgd_update(weight, grad, out=weight, **kwargs)
                else:
                    mx.nd.mp_sgd_update(weight, grad, master, out=weight, **kwargs)
            elif _kernel_fits(weight, master):
                compiled.setdefault(master is None, []).append((weight, grad, momentum, master,
                                                                lr, wd))
            else:
                fallback.append((weight, grad, momentum, master, lr, wd))
        for plain, items in compiled.items():
            weights_, grads_, momenta, masters, lrs_, wds_ = (list(c) for c in zip(*items))
            kernels.to_default_layout(weights_ + grads_)
            kernels.multi_nag_update(weights_, grads_, momenta, None if plain else masters,
                                     lrs_, wds_, momentum=self.momentum,
                                     rescale_grad=self.rescale_grad,
                                     clip_gradient=self.clip_gradient or -1.0,
                                     momentum_scale=self.momentum_scale)
        if fallback:
            self._fallback_update(fallback)
        return None

    def _fallback_update(self, items):
        """Without the compiled kernels (GPU arrays, no compiler): the decay out of MXNet's kernel.

        ``v <- v - (lr wd / mu) w`` and ``w <- (1 - lr wd) w`` in multi-tensor kernels, then the
        stock kernel with ``wd = 0``, whose in-place read of the weight is then harmless.
        """
        kwargs = {"rescale_grad": self.rescale_grad}
        if self.clip_gradient:
            kwargs["clip_gradient"] = self.clip_gradient
        if self.momentum_scale != 1.0:
            scale_arrays([momentum for _, _, momentum, _, _, _ in items], self.momentum_scale)
        decayed = [(momentum, master if master is not None else weight, lr * wd)
                   for weight, _, momentum, master, lr, wd in items if wd != 0.0 and lr != 0.0]
        if decayed:
            moms, targets, shrinks = (list(column) for column in zip(*decayed))
            _multi_axpy(moms, targets, [shrink / self.momentum for shrink in shrinks])
            _multi_axpy(targets, targets, shrinks)
        for weight, grad, momentum, master, lr, _ in items:
            if master is None:
                mx.nd.nag_mom_update(weight, grad, momentum, out=weight, lr=lr, wd=0.0,
                                     momentum=self.momentum, **kwargs)
            else:
                mx.nd.mp_nag_mom_update(weight, grad, momentum, master, out=weight, lr=lr,
                                        wd=0.0, momentum=self.momentum, **kwargs)


def _kernel_fits(weight, master):
    """Whether the compiled kernel takes this parameter (CPU; float32/64, or float16 + master)."""
    if weight.context.device_type != "cpu" or not kernels.available():
        return False
    if master is None:
        return weight.dtype in (np.float32, np.float64)
    return weight.dtype == np.float16 and master.dtype == np.float32


V_FORM_OPTIMIZERS = (mx.optimizer.SGD, mx.optimizer.NAG)
_ELASTIC_CLASSES = {mx.optimizer.SGD: ElasticSGD, mx.optimizer.NAG: ElasticNAG}
_STOCK_CLASSES = {ElasticSGD: mx.optimizer.SGD, ElasticNAG: mx.optimizer.NAG}


def elastic_optimizer(optimizer, optimizer_params):
    """The optimizer the trainer runs: MXNet's own, with ``sgd``/``nag`` swapped for the classes here.

    Parameters
    ----------
    optimizer : str or mxnet.optimizer.Optimizer
        As for :class:`mxnet.gluon.Trainer`.
    optimizer_params : dict or None
        Arguments for an optimizer given by name.

    Returns
    -------
    (optimizer, optimizer_params)
        To pass on to :class:`mxnet.gluon.Trainer`.
    """
    if isinstance(optimizer, str):
        elastic = {"sgd": ElasticSGD, "nag": ElasticNAG}.get(optimizer.lower())
        if elastic is not None:
            return elastic(**(optimizer_params or {})), None
        return optimizer, optimizer_params
    if type(optimizer) in _ELASTIC_CLASSES:
        # Same constructor arguments and state; only the update differs.
        optimizer.__class__ = _ELASTIC_CLASSES[type(optimizer)]
        if isinstance(optimizer, ElasticNAG):
            optimizer.aggregate_num = _MULTI_TENSOR_LIMIT
    return optimizer, optimizer_params


def portable_copy(optimizer):
    """A shallow copy of ``optimizer`` of MXNet's own class, for files plain MXNet can read."""
    clone = copy.copy(optimizer)
    stock = _STOCK_CLASSES.get(type(optimizer))
    if stock is not None:
        clone.__class__ = stock
        clone.__dict__.pop("zero_lr_step", None)
        if stock is mx.optimizer.NAG:
            clone.aggregate_num = 0
    return clone
