"""Elastic distributed training for MXNet/Gluon with Dynamic mini-batch SGD (Lin et al. 2019).

The pure arithmetic (:mod:`gluon_elastic.policy`, :mod:`gluon_elastic.schedule`) imports without
MXNet; :class:`ElasticTrainer` imports MXNet on first use.
"""
from . import backends
from .policy import BatchPolicy, Transition, lr_scale
from .schedule import Schedule, epochs

__version__ = "0.1.0"
__all__ = ["BatchPolicy", "Transition", "lr_scale", "Schedule", "epochs", "ElasticTrainer",
           "backends"]


def __getattr__(name):
    # MXNet takes seconds to import; load it only when the trainer or a backend is asked for.
    if name == "ElasticTrainer":
        from .trainer import ElasticTrainer
        return ElasticTrainer
    raise AttributeError("module 'gluon_elastic' has no attribute %r" % name)
