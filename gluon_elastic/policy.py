"""Pure arithmetic of elastic training: LR scaling rules, batch policies and world-change transitions.

This module imports nothing but the standard library, so the arithmetic can be tested, reasoned
about and reused without MXNet.

Contract
--------
The learning rate applied at iteration ``t`` is ``schedule(progress) * multiplier(t)``. The schedule
is a function of the number of samples trained (:mod:`gluon_elastic.schedule`); the multiplier is the
scaling rule evaluated at the current global batch size, reached either at once or through the
Dynamic SGD ramp (Lin et al. 2019, Eq. 6) after every change of the world size:

    gamma_t = 1 + ((t - t0) / T) * (k - 1)   for t - t0 < T,  k afterwards

where ``k`` is the ratio of the new multiplier to the multiplier in use when the change arrived, so
that a change arriving mid-ramp starts from wherever the ramp had got to.

Automatic ramp length from the momentum
---------------------------------------
``Transition(ramp_iters='auto', momentum=mu)`` derives ``T`` from the momentum ``mu`` and the change
factor ``k`` instead of a constant. In the u-form update (``u <- mu u + g``, ``w <- w - lr u``) the
buffer ``u0`` built before the change still enters the step ``t`` iterations after it with weight
``mu^t``, multiplied by the ramped LR ``gamma_t lr``. The rule asks that this stale, small-batch
part never moves the weights further than it did at the last step before the change:

    gamma_t mu^t <= 1   for every t >= 1,   gamma_t = 1 + (t / T) (k - 1).

``mu^-t - gamma_t`` is convex in ``t`` and 0 at ``t = 0``, so it is non-negative for every
``t >= 1`` exactly when it is at ``t = 1``: ``1 + (k - 1) / T <= 1 / mu``, that is

    T = ceil((k - 1) * mu / (1 - mu)),

the change in LR spread over the buffer's mean age ``mu / (1 - mu)`` (9 iterations at
``mu = 0.9``: ``T`` = 9, 27, 63, 135 for ``k`` = 2, 4, 8, 16, close to the paper's ``T = 8k``). A
shrink that ramps (``shrink='ramp'``) uses ``max(k, 1/k)`` in place of ``k``; without momentum
(``mu = 0``) nothing stale remains and ``T = 0``.

Changes in the middle of a ramp
-------------------------------
A change is judged against the multiplier *in use* (that of the last step taken), not against the
world before: ``k = target / multiplier in use``. So a world that shrinks while a growth ramp is
under way, to a target still above the multiplier reached, is treated as growth towards the new
target (ramped); a target below it is a shrink (cut at once by default). Examples with
``ramp_per_k=8`` (``T = round(8 * max(k, 1/k))``), the second change arriving at iteration 8:

===========================  =========  ======  ============  ==============================
multipliers (shrink mode)    in use     k       judged as     what the LR does
===========================  =========  ======  ============  ==============================
1 -> 4 -> 3                  1.656      1.811   growth        ramps 1.656 -> 3 over 14
1 -> 4 -> 1                  1.656      0.604   shrink        cut to 1 at once
1 -> 0.25 -> 0.5 (ramp)      0.836      0.598   shrink        ramps 0.836 -> 0.5 over 13
1 -> 0.25 -> 0.5 (immediate) 0.25       2.0     growth        ramps 0.25 -> 0.5 over 16
===========================  =========  ======  ============  ==============================
"""
import math

__all__ = [
    "SCALING_RULES", "BATCH_POLICIES", "TRANSITIONS", "SHRINK_MODES",
    "lr_scale", "split_evenly", "BatchPolicy", "Transition", "auto_ramp_length",
    "adascale_estimates", "adascale_gain", "AdaScale",
]

SCALING_RULES = ("none", "linear", "sqrt", "adascale")
BATCH_POLICIES = ("fixed_local", "fixed_global")
TRANSITIONS = ("immediate", "dynamic")
SHRINK_MODES = ("immediate", "ramp")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(choices), value))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("%s must be a positive integer, got %r" % (name, value))


def lr_scale(rule, global_batch_size, base_batch_size):
    """Multiplier of the base learning rate for a global batch size.

    Parameters
    ----------
    rule : {'none', 'linear', 'sqrt', 'adascale'}
        ``none`` keeps the LR, ``linear`` scales it by ``B / B0`` (Goyal et al. 2017), ``sqrt`` by
        ``sqrt(B / B0)``. ``adascale`` returns the scale ``S = B / B0``, at which
        :class:`AdaScale` then evaluates its gain.
    global_batch_size : int
        Samples per optimizer step over all workers, ``B``.
    base_batch_size : int
        Global batch size ``B0`` at which the base LR was tuned.

    Returns
    -------
    float
    """
    _check_choice("scaling rule", rule, SCALING_RULES)
    _check_positive_int("global_batch_size", global_batch_size)
    _check_positive_int("base_batch_size", base_batch_size)
    ratio = global_batch_size / base_batch_size
    if rule in ("linear", "adascale"):
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    return 1.0


def split_evenly(count, parts):
    """Split ``count`` items into ``parts`` sizes that differ by at most one, larger ones first."""
    base, extra = divmod(count, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


class BatchPolicy:
    """How batch sizes follow the world size.

    Parameters
    ----------
    name : {'fixed_local', 'fixed_global'}
        ``fixed_local`` keeps the per-worker batch (the paper's setting; the global batch is
        ``world_size * local_batch_size``). ``fixed_global`` keeps the global batch (AWS Dynamic
        Training); it is split as evenly as possible, the first ``B % N`` ranks taking one more.
    local_batch_size : int, optional
        Per-worker batch; required for ``fixed_local``.
    global_batch_size : int, optional
        Global batch; required for ``fixed_global``.
    """

    def __init__(self, name="fixed_local", local_batch_size=None, global_batch_size=None):
        _check_choice("batch policy", name, BATCH_POLICIES)
        if name == "fixed_local":
            _check_positive_int("local_batch_size", local_batch_size)
        else:
            _check_positive_int("global_batch_size", global_batch_size)
        self.name = name
        self._local_batch_size = local_batch_size
        self._global_batch_size = global_batch_size

    def global_batch_size(self, world_size):
        """Samples per optimizer step over all ``world_size`` workers."""
        _check_positive_int("world_size", world_size)
        if self.name == "fixed_local":
            return self._local_batch_size * world_size
        if world_size > self._global_batch_size:
            raise ValueError("world_size %d is larger than global_batch_size %d: some worker would "
                             "get an empty batch" % (world_size, self._global_batch_size))
        return self._global_batch_size

    def local_batch_size(self, world_size, rank=0):
        """Samples per optimizer step on worker ``rank`` of ``world_size``."""
        return self.local_batch_sizes(world_size)[rank]

    def local_batch_sizes(self, world_size):
        """Per-rank batch sizes, a list of ``world_size`` integers summing to the global batch."""
        return split_evenly(self.global_batch_size(world_size), world_size)

    def __repr__(self):
        size = self._local_batch_size if self.name == "fixed_local" else self._global_batch_size
        return "BatchPolicy(%r, %d)" % (self.name, size)


def auto_ramp_length(k, momentum):
    """Shortest ramp ``T`` after which the stale momentum buffer never outweighs the old LR.

    ``T = ceil((max(k, 1/k) - 1) * momentum / (1 - momentum))``; derivation in the module
    docstring ("Automatic ramp length from the momentum").

    Parameters
    ----------
    k : float
        Ratio of the new multiplier to the one in use, > 0.
    momentum : float
        Momentum coefficient ``mu``, in [0, 1).

    Returns
    -------
    int
    """
    if not k > 0:
        raise ValueError("k must be > 0, got %r" % (k,))
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0.0 <= momentum < 1.0:
        raise ValueError("momentum must be a number in [0, 1), got %r" % (momentum,))
    factor = max(k, 1.0 / k)
    # Rounding guard: (k - 1) * mu / (1 - mu) lands a hair above an integer in floating point
    # (15 * 0.9 / 0.1 = 135.00000000000003), which must not add an iteration.
    return int(math.ceil((factor - 1.0) * momentum / (1.0 - momentum) - 1e-9))


class Transition:
    """The LR multiplier over iterations, and how it moves when the world size changes.

    Parameters
    ----------
    kind : {'immediate', 'dynamic'}
        ``immediate`` jumps to the new multiplier at the first step after the change (with momentum
        correction, the paper's baseline Eq. 5; without it, MXNet's native behaviour). ``dynamic``
        ramps linearly from the multiplier in use to the new one over ``T`` iterations (Eq. 6).
    ramp_iters : int or 'auto', optional
        ``T`` in iterations. Mutually exclusive with ``ramp_per_k``. ``'auto'`` derives ``T``
        from ``momentum`` and ``k`` (:func:`auto_ramp_length`; module docstring).
    ramp_per_k : float, optional
        ``T = round(ramp_per_k * max(k, 1/k))``: a ramp proportional to the size of the change.
        Used when ``ramp_iters`` is None; default 8 (so a doubling ramps over 16 iterations).
    shrink : {'immediate', 'ramp'}
        What ``dynamic`` does when the multiplier goes down (k < 1). A slow ramp down keeps a
        too-large LR for the smaller batch, so the default cuts at once.
    momentum_correction : bool
        Rescale the momentum buffer by ``lr_t / lr_{t-1}`` whenever the LR changes, which makes
        MXNet's v-form update follow the paper's u-form equations. Read by the trainer.
    initial_multiplier : float
        Multiplier before any change.
    momentum : float, optional
        Momentum coefficient of the optimizer; required by (and only used by)
        ``ramp_iters='auto'``.
    """

    def __init__(self, kind="dynamic", ramp_iters=None, ramp_per_k=None, shrink="immediate",
                 momentum_correction=True, initial_multiplier=1.0, momentum=None):
        _check_choice("transition", kind, TRANSITIONS)
        _check_choice("shrink", shrink, SHRINK_MODES)
        if ramp_iters is not None and ramp_per_k is not None:
            raise ValueError("give ramp_iters or ramp_per_k, not both (got %r and %r)"
                             % (ramp_iters, ramp_per_k))
        if ramp_iters == "auto":
            if momentum is None:
                raise ValueError("ramp_iters='auto' derives T from the momentum: pass momentum=")
            # Validates the momentum at construction rather than at the first change.
            auto_ramp_length(1.0, momentum)
        elif ramp_iters is not None and (isinstance(ramp_iters, bool)
                                         or not isinstance(ramp_iters, int) or ramp_iters < 0):
            raise ValueError("ramp_iters (T) must be an integer >= 0 or 'auto', got %r"
                             % (ramp_iters,))
        if ramp_iters is None:
            ramp_per_k = 8.0 if ramp_per_k is None else ramp_per_k
            if not isinstance(ramp_per_k, (int, float)) or ramp_per_k < 0:
                raise ValueError("ramp_per_k must be a number >= 0, got %r" % (ramp_per_k,))
        if not initial_multiplier > 0:
            raise ValueError("initial_multiplier must be > 0, got %r" % (initial_multiplier,))
        self.kind = kind
        self.ramp_iters = ramp_iters
        self.ramp_per_k = ramp_per_k
        self.shrink = shrink
        self.momentum_correction = bool(momentum_correction)
        self.momentum = momentum
        # The ramp in force: from start_multiplier at start_iter to target_multiplier after ramp_len.
        self.start_multiplier = float(initial_multiplier)
        self.target_multiplier = float(initial_multiplier)
        self.start_iter = 0
        self.ramp_len = 0

    def ramp_length(self, k):
        """Ramp length ``T`` in iterations for a change by factor ``k``."""
        if self.kind == "immediate" or k == 1.0 or (k < 1.0 and self.shrink == "immediate"):
            return 0
        if self.ramp_iters == "auto":
            return auto_ramp_length(k, self.momentum)
        if self.ramp_iters is not None:
            return self.ramp_iters
        return max(1, int(round(self.ramp_per_k * max(k, 1.0 / k))))

    def multiplier(self, iteration):
        """Multiplier applied at step number ``iteration`` (0-based count of optimizer updates)."""
        elapsed = iteration - self.start_iter
        if elapsed < 0:
            return self.start_multiplier
        if elapsed >= self.ramp_len:
            return self.target_multiplier
        return self.start_multiplier + (elapsed / self.ramp_len) * (
            self.target_multiplier - self.start_multiplier)

    def in_ramp(self, iteration):
        """Whether step ``iteration`` lies inside a ramp (its multiplier is not yet the target)."""
        return 0 <= iteration - self.start_iter < self.ramp_len

    def change(self, iteration, new_multiplier):
        """Start the transition to ``new_multiplier`` at step ``iteration``.

        Returns
        -------
        dict
            ``k``, ``from_multiplier``, ``target_multiplier`` and ``ramp_len`` of the new transition.
        """
        if not new_multiplier > 0:
            raise ValueError("new_multiplier must be > 0, got %r" % (new_multiplier,))
        # The multiplier in use is the one of the last step taken; Eq. 6 gives gamma = 1 at t0.
        current = self.multiplier(iteration - 1)
        k = new_multiplier / current
        self.start_multiplier = current
        self.target_multiplier = float(new_multiplier)
        self.start_iter = int(iteration)
        self.ramp_len = self.ramp_length(k)
        return {"k": k, "from_multiplier": current, "target_multiplier": self.target_multiplier,
                "ramp_len": self.ramp_len}

    def reset(self, multiplier, iteration=0):
        """Hold ``multiplier`` from ``iteration`` on, with no ramp (the start of training)."""
        if not multiplier > 0:
            raise ValueError("multiplier must be > 0, got %r" % (multiplier,))
        self.start_multiplier = self.target_multiplier = float(multiplier)
        self.start_iter = int(iteration)
        self.ramp_len = 0

    def state_dict(self):
        """The ramp in force, as plain values."""
        return {"start_multiplier": self.start_multiplier, "target_multiplier": self.target_multiplier,
                "start_iter": self.start_iter, "ramp_len": self.ramp_len}

    def load_state_dict(self, state):
        """Restore the ramp saved by :meth:`state_dict`."""
        self.start_multiplier = float(state["start_multiplier"])
        self.target_multiplier = float(state["target_multiplier"])
        self.start_iter = int(state["start_iter"])
        self.ramp_len = int(state["ramp_len"])

    def __repr__(self):
        return ("Transition(kind=%r, ramp_iters=%r, ramp_per_k=%r, shrink=%r, momentum_correction=%r%s)"
                % (self.kind, self.ramp_iters, self.ramp_per_k, self.shrink, self.momentum_correction,
                   ", momentum=%r" % self.momentum if self.ramp_iters == "auto" else ""))


# ----------------------------------------------------------------------------------- AdaScale
def adascale_estimates(worker_sqnorm_sum, reduced_sqnorm, global_batch_size, world_size):
    """Per-sample gradient variance and squared mean gradient norm from one step's gradients.

    Worker ``i`` holds ``G_i``, the sum of the gradients of its ``b_i`` samples; the reduction
    gives ``G = sum_i G_i`` over ``B = sum_i b_i`` samples. With per-sample gradients of mean
    ``m`` and variance (trace) ``s2``, ``E[|G_i|^2 / b_i] = b_i |m|^2 + s2`` and
    ``E[|G|^2 / B] = B |m|^2 + s2``, so

        s2   = (sum_i |G_i|^2 / b_i - |G|^2 / B) / (N - 1)
        |m|^2 = |G|^2 / B^2 - s2 / B

    are unbiased (workers with ``b_i = 0`` contribute nothing to the first sum, and do not count
    in ``N``). This is the estimate of Johnson et al. (AdaScale SGD, ICML 2020), written for
    per-worker batches of any size.

    Parameters
    ----------
    worker_sqnorm_sum : float
        ``sum_i |G_i|^2 / b_i`` over the workers with samples (one scalar reduction).
    reduced_sqnorm : float
        ``|G|^2``, the squared norm of the reduced (summed) gradient.
    global_batch_size : int
        ``B``.
    world_size : int
        ``N``, the workers that had samples.

    Returns
    -------
    (float, float) or None
        ``(s2, |m|^2)``, or None when one worker cannot tell variance from mean.
    """
    if world_size < 2:
        return None
    variance = (worker_sqnorm_sum - reduced_sqnorm / global_batch_size) / (world_size - 1)
    mean_sq = reduced_sqnorm / global_batch_size ** 2 - variance / global_batch_size
    return variance, mean_sq


def adascale_gain(variance, mean_sq, scale, base_batch_size):
    """AdaScale's gain ``r = (sigma^2 + mu^2) / (sigma^2 / S + mu^2)``, between 1 and ``S``.

    ``sigma^2 = variance / base_batch_size`` is the variance of a gradient averaged over the base
    batch and ``mu^2 = mean_sq``. Negative estimates (noise) count as 0; with no signal at all
    the gain is 1. At ``S = 1`` it is exactly 1.
    """
    sigma_sq = max(variance, 0.0) / base_batch_size
    mu_sq = max(mean_sq, 0.0)
    if sigma_sq + mu_sq == 0.0:
        return 1.0
    return (sigma_sq + mu_sq) / (sigma_sq / scale + mu_sq)


class AdaScale:
    """AdaScale's smoothed gain and its progress in scale-invariant samples.

    The estimates of :func:`adascale_estimates` are smoothed by exponential moving averages with
    ``theta = max(1 - S / 1000, 0)`` (the smoothing of the AdaScale paper: larger scales see more
    samples per step, so they average over fewer steps). The first estimate is taken as it is.

    Progress: AdaScale advances its base schedule by ``r`` base iterations per step. Here the base
    schedule is a function of samples, so a step advances the *schedule progress* by
    ``r * base_batch_size`` samples (at ``S = 1`` that is the global batch, as for the other
    rules). The LR at a given schedule progress is the same whatever worlds led there; training
    to a schedule defined in samples takes more samples at ``S > 1``, as AdaScale intends.

    Parameters
    ----------
    base_batch_size : int
        ``B0``, the batch size at which ``S = 1``.
    """

    def __init__(self, base_batch_size):
        _check_positive_int("base_batch_size", base_batch_size)
        self.base_batch_size = base_batch_size
        self.variance = None   # smoothed per-sample gradient variance
        self.mean_sq = None    # smoothed squared norm of the mean gradient

    def observe(self, worker_sqnorm_sum, reduced_sqnorm, global_batch_size, world_size, scale):
        """Fold in one step's estimates; a one-worker step leaves the averages as they are."""
        estimates = adascale_estimates(worker_sqnorm_sum, reduced_sqnorm, global_batch_size,
                                       world_size)
        if estimates is None:
            return
        if self.variance is None:
            self.variance, self.mean_sq = estimates
            return
        theta = max(1.0 - scale / 1000.0, 0.0)
        self.variance = theta * self.variance + (1.0 - theta) * estimates[0]
        self.mean_sq = theta * self.mean_sq + (1.0 - theta) * estimates[1]

    def gain(self, scale):
        """The gain at ``scale``: exactly 1 at ``S = 1`` and before any estimate."""
        if scale == 1.0 or self.variance is None:
            return 1.0
        return adascale_gain(self.variance, self.mean_sq, scale, self.base_batch_size)

    def state_dict(self):
        """The smoothed estimates, as plain values."""
        return {"variance": self.variance, "mean_sq": self.mean_sq}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`."""
        self.variance, self.mean_sq = state["variance"], state["mean_sq"]

