"""Base learning-rate schedules as functions of training progress in samples.

Iterations per epoch change with the world size, so a schedule written in iterations would put a
step decay at a different epoch depending on how many workers got there. Every schedule here takes
the number of samples trained so far; :func:`epochs` converts an epoch count into samples.

The value returned is the LR at the base batch size; the trainer multiplies it by the scaling
multiplier of :class:`gluon_elastic.policy.Transition`. Imports nothing but the standard library.
"""
import bisect
import math

__all__ = ["SCHEDULE_MODES", "Schedule", "epochs"]

SCHEDULE_MODES = ("constant", "step", "linear", "cosine", "poly")


def epochs(count, samples_per_epoch):
    """Number of samples in ``count`` epochs (``count`` may be fractional)."""
    if samples_per_epoch <= 0:
        raise ValueError("samples_per_epoch must be > 0, got %r" % (samples_per_epoch,))
    return int(round(count * samples_per_epoch))


class Schedule:
    """A base LR schedule with an optional linear warmup, all in samples.

    Parameters
    ----------
    mode : {'constant', 'step', 'linear', 'cosine', 'poly'}
        Shape after warmup (GluonCV's ``LRScheduler`` modes). ``step``: ``base_lr * step_factor **
        n`` with ``n`` the number of boundaries in ``step_samples`` already reached. ``linear``:
        from ``base_lr`` to ``final_lr`` in a straight line (``poly`` with power 1). ``cosine``: from ``base_lr`` to ``final_lr``
        along half a cosine between the end of warmup and ``total_samples``. ``poly``:
        ``final_lr + (base_lr - final_lr) * (1 - p) ** power`` with ``p`` the fraction of the
        post-warmup span done.
    base_lr : float
        LR at the base batch size once warmup is over.
    total_samples : int, optional
        Length of training, required by ``linear``, ``cosine`` and ``poly``.
    warmup_samples : int
        Length of the linear warmup from ``warmup_lr`` to ``base_lr``.
    warmup_lr : float
        LR at progress 0 when warmup is on.
    step_samples : sequence of int
        Boundaries of ``step`` decay, increasing.
    step_factor : float
        Factor applied at each boundary.
    power : float
        Exponent of ``poly``.
    final_lr : float
        LR reached at ``total_samples`` by ``linear``, ``cosine`` and ``poly``.
    """

    def __init__(self, mode="constant", base_lr=0.1, total_samples=None, warmup_samples=0,
                 warmup_lr=0.0, step_samples=(), step_factor=0.1, power=2.0, final_lr=0.0):
        if mode not in SCHEDULE_MODES:
            raise ValueError("schedule mode must be one of %s, got %r"
                             % (", ".join(SCHEDULE_MODES), mode))
        for name, value in (("base_lr", base_lr), ("warmup_lr", warmup_lr), ("final_lr", final_lr)):
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ValueError("%s must be a number >= 0, got %r" % (name, value))
        if warmup_samples < 0:
            raise ValueError("warmup_samples must be >= 0, got %r" % (warmup_samples,))
        if mode in ("linear", "cosine", "poly"):
            if total_samples is None or total_samples <= warmup_samples:
                raise ValueError("total_samples must be given and larger than warmup_samples (%r) "
                                 "for mode %r, got %r" % (warmup_samples, mode, total_samples))
        step_samples = list(step_samples)
        if any(b <= a for a, b in zip(step_samples, step_samples[1:])):
            raise ValueError("step_samples must be increasing, got %r" % (step_samples,))
        if not step_factor > 0:
            raise ValueError("step_factor must be > 0, got %r" % (step_factor,))
        self.mode = mode
        self.base_lr = float(base_lr)
        self.total_samples = total_samples
        self.warmup_samples = int(warmup_samples)
        self.warmup_lr = float(warmup_lr)
        self.step_samples = step_samples
        self.step_factor = float(step_factor)
        self.power = float(power)
        self.final_lr = float(final_lr)

    def __call__(self, progress):
        """Base LR after ``progress`` samples have been trained."""
        if progress < 0:
            raise ValueError("progress must be >= 0 samples, got %r" % (progress,))
        if progress < self.warmup_samples:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * progress / self.warmup_samples
        if self.mode == "constant":
            return self.base_lr
        if self.mode == "step":
            return self.base_lr * self.step_factor ** bisect.bisect_right(self.step_samples, progress)
        span = self.total_samples - self.warmup_samples
        done = min(1.0, (progress - self.warmup_samples) / span)
        if self.mode == "cosine":
            return self.final_lr + (self.base_lr - self.final_lr) * (1 + math.cos(math.pi * done)) / 2
        power = 1.0 if self.mode == "linear" else self.power
        return self.final_lr + (self.base_lr - self.final_lr) * (1 - done) ** power

    def __repr__(self):
        return "Schedule(mode=%r, base_lr=%r, total_samples=%r, warmup_samples=%r)" % (
            self.mode, self.base_lr, self.total_samples, self.warmup_samples)
