"""Momentum optimizers whose buffers follow the paper's u-form equations exactly.

MXNet's ``sgd`` and ``nag`` keep the LR inside the momentum buffer (v-form, ``v = -lr * u``).
:class:`gluon_elastic.ElasticTrainer` rescales the buffer by ``lr_t / lr_{t-1}`` whenever the LR
changes, which makes the v-form trajectory equal the u-form one (Eq. 3 of Lin et al.). Two cases
need the optimizer's help, and the classes here give it:

1. **A step at LR 0** (warmup from 0, a schedule that ends at 0). In u-form nothing is special:
   ``u <- mu * u + g'`` and the weight stays. In v-form the buffer would lose ``u`` (``v = 0 * u``).
   With ``zero_lr_step`` set, the optimizer keeps the weight and accumulates the buffer at the
   scale ``lr`` it was last built with (the trainer sets ``lr`` to that scale and the flag on), so
   the next LR above 0 rescales it exactly as u-form would.
2. **Nesterov with weight decay.** MXNet 1.9.1's ``nag_mom_update`` and ``mp_nag_mom_update``
   write the new weight in place and then read it for the weight-decay term of the momentum:
   ``v <- mu * v - lr * (g + wd * w_new)``. :class:`ElasticNAG` moves the weight decay out of the
   kernel: ``v <- v - (lr * wd / mu) * w`` and ``w <- (1 - lr * wd) * w`` (two multi-tensor
   kernels for up to 60 parameters at once), then the stock kernel with ``wd = 0``, which gives

       v <- mu * v - lr * (g + wd * w) ;  w <- w + mu * v - lr * (g + wd * w)

   on every path (float32, float16 with fp32 master weights, clipped gradients), at about the
   cost of the stock fused update.

Both pickle as MXNet's own classes (:func:`portable_copy`), so a ``.states`` file written by the
trainer loads into a plain ``gluon.Trainer``.
"""
import copy

import mxnet as mx

__all__ = ["ElasticSGD", "ElasticNAG", "elastic_optimizer", "portable_copy", "scale_arrays",
           "V_FORM_OPTIMIZERS"]

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


def scale_arrays(arrays, factor):
    """Multiply every array in place by ``factor``, a few multi-tensor kernels for all of them."""
    by_dtype = {}
    for array in arrays:
        by_dtype.setdefault(array.dtype, []).append(array)
    for group in by_dtype.values():
        _multi_axpy(group, group, [1.0 - factor] * len(group))


class _ZeroLRStep:
    """Mixin: with ``zero_lr_step`` set, keep the weights and accumulate the momentum buffers.

    The buffer is updated at the scale ``lr`` (times each parameter's ``lr_mult``), i.e.
    ``v <- mu * v - lr * (clip(rescale * g) + wd * w)``, which in u-form is ``u <- mu * u + g'``.
    """

    zero_lr_step = False

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
            momentum[:] = self.momentum * momentum - lr * (grad + wd * weight)


class ElasticSGD(_ZeroLRStep, mx.optimizer.SGD):
    """MXNet's ``sgd`` (fused multi-tensor kernels and all) with a u-form step at LR 0."""

    def update_multi_precision(self, index, weight, grad, state):
        if self.zero_lr_step:
            return self._momentum_only(*_as_lists(index, weight, grad, state))
        return super().update_multi_precision(index, weight, grad, state)


class ElasticNAG(_ZeroLRStep, mx.optimizer.NAG):
    """Nesterov momentum, v-form, with the weight-decay term taken from the weight before the step.

    ``g' = clip(rescale_grad * g) + wd * w``;  ``v <- mu * v - lr * g'``;
    ``w <- w + mu * v - lr * g'``, i.e. the u-form ``u <- mu * u + g'``;
    ``w <- w - lr * (g' + mu * u)`` with ``v = -lr * u``.
    """

    def __init__(self, momentum=0.0, **kwargs):
        super().__init__(momentum=momentum, **kwargs)
        # The Updater hands over up to this many parameters of one dtype per call, so the weight
        # decay of a whole group moves in two kernels.
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
        kwargs = {"rescale_grad": self.rescale_grad}
        if self.clip_gradient:
            kwargs["clip_gradient"] = self.clip_gradient

        # Weight decay out of the kernel, for every parameter with momentum and decay.
        moms, masters, folds, shrinks = [], [], [], []
        for weight, state, lr, wd in zip(weights, states, lrs, wds):
            momentum, master = _split_state(state)
            if momentum is not None and wd != 0.0 and lr != 0.0:
                moms.append(momentum)
                masters.append(master if master is not None else weight)
                folds.append(lr * wd / self.momentum)
                shrinks.append(lr * wd)
        if moms:
            _multi_axpy(moms, masters, folds)        # v <- v - (lr wd / mu) w
            _multi_axpy(masters, masters, shrinks)   # w <- w - lr wd w

        for weight, grad, state, lr, wd in zip(weights, grads, states, lrs, wds):
            momentum, master = _split_state(state)
            if momentum is not None:
                # The decay was applied above (or is 0): the kernel's in-place read is harmless.
                if master is None:
                    mx.nd.nag_mom_update(weight, grad, momentum, out=weight, lr=lr, wd=0.0,
                                         momentum=self.momentum, **kwargs)
                else:
                    mx.nd.mp_nag_mom_update(weight, grad, momentum, master, out=weight, lr=lr,
                                            wd=0.0, momentum=self.momentum, **kwargs)
            elif master is None:  # no momentum: plain SGD, whose kernel reads the weight once
                mx.nd.sgd_update(weight, grad, out=weight, lr=lr, wd=wd, **kwargs)
            else:
                mx.nd.mp_sgd_update(weight, grad, master, out=weight, lr=lr, wd=wd, **kwargs)
        return None


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
