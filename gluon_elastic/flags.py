"""The elastic command-line flags, defined once for every recipe, job and benchmark.

    parser = argparse.ArgumentParser()
    gluon_elastic.flags.add_elastic_args(parser)
    args = parser.parse_args()
    trainer = ElasticTrainer(params, "sgd", {...}, **gluon_elastic.flags.trainer_kwargs(args))

Each value is checked at parse time, so a bad one ends the program with argparse's usage message
and exit code 2 before anything is written; :func:`trainer_kwargs` raises ``ValueError`` for
contradictory flags, which callers turn into ``parser.error``. Imports no MXNet.
"""
import argparse

from .backends import BACKEND_NAMES
from .policy import BATCH_POLICIES, SCALING_RULES, SHRINK_MODES, TRANSITIONS

__all__ = ["add_elastic_args", "add_metrics_args", "trainer_kwargs", "parse_world_schedule",
           "world_at", "positive_int", "non_negative_int", "positive_float", "non_negative_float"]


def _bounded(convert, minimum, description, inclusive=True):
    """An argparse type: ``convert(text)``, at least (or above) ``minimum``, else an error."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected %s, got %r" % (description, text)) from None
        # NaN fails every comparison; infinity is refused too (an infinite LR or ramp trains
        # nothing but NaNs).
        if not (value >= minimum if inclusive else value > minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError("expected %s, got %r" % (description, text))
        return value
    return parse


# argparse types shared by every command line of the project.
positive_int = _bounded(int, 1, "a positive integer")
non_negative_int = _bounded(int, 0, "an integer >= 0")
positive_float = _bounded(float, 0.0, "a number > 0", inclusive=False)
non_negative_float = _bounded(float, 0.0, "a number >= 0")


def parse_world_schedule(text):
    """Parse ``'0:8,30:128,60:16'`` (epoch:world_size, epochs increasing from 0).

    Returns
    -------
    list of (int, int)
    """
    schedule = []
    for item in text.split(","):
        try:
            epoch, world_size = (int(part) for part in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                "world schedule items are EPOCH:WORLD_SIZE, got %r in %r" % (item, text)) from None
        if world_size <= 0 or epoch < 0:
            raise argparse.ArgumentTypeError(
                "world schedule needs epochs >= 0 and world sizes >= 1, got %r" % item)
        schedule.append((epoch, world_size))
    epochs = [epoch for epoch, _ in schedule]
    if epochs[0] != 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise argparse.ArgumentTypeError(
            "world schedule epochs must start at 0 and increase, got %r" % text)
    return schedule


def world_at(schedule, epoch):
    """World size that ``schedule`` (from :func:`parse_world_schedule`) gives at ``epoch``."""
    world_size = schedule[0][1]
    for start, size in schedule:
        if epoch >= start:
            world_size = size
    return world_size


def _ramp_iters(text):
    """``--ramp-iters``: an integer >= 0, or ``auto``."""
    return "auto" if text == "auto" else non_negative_int(text)


def add_elastic_args(parser, local_batch_size=32, lr=0.1):
    """Add the elastic flags to ``parser`` (an ``argparse.ArgumentParser``) in their own group."""
    group = parser.add_argument_group("elastic training")
    group.add_argument("--backend", default="device", choices=BACKEND_NAMES,
                       help="local/device: one process; dist_sync/dist_device_sync: KVStore group "
                            "(start with gluon_elastic.launch); horovod: horovodrun (default: device)")
    group.add_argument("--local-batch-size", type=positive_int, default=local_batch_size,
                       help="per-worker batch with --batch-policy fixed_local (default: %(default)s)")
    group.add_argument("--global-batch-size", type=positive_int, default=None,
                       help="global batch with --batch-policy fixed_global")
    group.add_argument("--batch-policy", default="fixed_local", choices=BATCH_POLICIES,
                       help="fixed_local: per-worker batch fixed, global batch follows the world "
                            "(the paper); fixed_global: global batch fixed (default: %(default)s)")
    group.add_argument("--base-batch-size", type=positive_int, default=None,
                       help="global batch at which --lr holds (default: the starting world's)")
    group.add_argument("--lr", type=non_negative_float, default=lr,
                       help="base learning rate at --base-batch-size (default: %(default)s)")
    group.add_argument("--scaling", default="linear", choices=SCALING_RULES,
                       help="LR scaling rule with the global batch (default: %(default)s)")
    group.add_argument("--transition", default="dynamic", choices=TRANSITIONS,
                       help="dynamic: Dynamic SGD ramp over T iterations; immediate: jump "
                            "(default: %(default)s)")
    group.add_argument("--ramp-iters", type=_ramp_iters, default=None,
                       help="ramp length T in iterations, or 'auto' to derive it from the "
                            "momentum and k (default: 8 per unit of k)")
    group.add_argument("--ramp-per-k", type=non_negative_float, default=None,
                       help="ramp length T = ramp_per_k * max(k, 1/k) iterations (default: 8)")
    group.add_argument("--shrink", default="immediate", choices=SHRINK_MODES,
                       help="on a shrinking world: cut the LR at once, or ramp (default: %(default)s)")
    group.add_argument("--no-momentum-correction", dest="momentum_correction",
                       action="store_false",
                       help="keep MXNet's v-form momentum when the LR changes (no rescaling)")
    group.add_argument("--commit-interval", type=positive_int, default=20,
                       help="steps between commits of the elastic state (default: %(default)s)")
    group.add_argument("--check-interval", type=positive_int, default=1,
                       help="steps between membership checks (default: %(default)s)")
    group.add_argument("--checkpoint-dir", default=None,
                       help="where saved state lives (restart elasticity and resumption)")
    group.add_argument("--emulate-schedule", type=parse_world_schedule, default=None,
                       metavar="EPOCH:WORLD,...",
                       help="emulate a changing world in one process, e.g. 0:8,30:128,60:16: each "
                            "virtual worker has its own batch and BatchNorm statistics")
    group.add_argument("--seed", type=int, default=0, help="seed of data order and init")
    return group


def add_metrics_args(parser):
    """Add ``--metrics-file`` and ``--metrics-interval``, read by
    :class:`gluon_elastic.metrics.MetricsWriter`, to ``parser``."""
    group = parser.add_argument_group("metrics")
    group.add_argument("--metrics-file", default=None, metavar="RUN.jsonl",
                       help="rank 0 writes JSON-lines metrics here: steps, epochs, and one event "
                            "per world change, failure, rollback and restart (draw them with "
                            "python -m gluon_elastic.plot)")
    group.add_argument("--metrics-interval", type=positive_int, default=1,
                       help="steps between step records of --metrics-file (default: %(default)s)")
    return group


def trainer_kwargs(args):
    """Keyword arguments of :class:`gluon_elastic.ElasticTrainer` from parsed flags.

    ``kvstore`` is left out: create the backend (it may need the emulated world size) and pass it.
    """
    if args.ramp_iters is not None and args.ramp_per_k is not None:
        raise ValueError("give --ramp-iters or --ramp-per-k, not both")
    if args.batch_policy == "fixed_global" and args.global_batch_size is None:
        raise ValueError("--batch-policy fixed_global needs --global-batch-size")
    return {"local_batch_size": args.local_batch_size if args.batch_policy == "fixed_local" else None,
            "global_batch_size": args.global_batch_size,
            "batch_policy": args.batch_policy, "base_batch_size": args.base_batch_size,
            "scaling": args.scaling, "transition": args.transition,
            "ramp_iters": args.ramp_iters, "ramp_per_k": args.ramp_per_k, "shrink": args.shrink,
            "momentum_correction": args.momentum_correction}
