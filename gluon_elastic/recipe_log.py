"""The progress lines a recipe prints on rank 0, and a reader of GluonCV's printed format.

:class:`gluon_elastic.recipe.ElasticLoop` asks a log format for every line it prints, so each
recipe can print the lines of the GluonCV script it stands in for:

* :class:`RecipeLog` (the default): ``name=value`` fields separated by tabs::

    Epoch[E] Batch [B]\\tSpeed: S samples/sec\\tworld=W\\tglobal_batch=G\\tlr=L\\tloss=X
    [Epoch E] training: loss=X\\tworld=W\\tglobal_batch=G
    [Epoch E] speed: S samples/sec\\ttime cost: T
    [Epoch E] validation: name=value\\t...

  ``B`` counts steps from 1.
* :class:`GluonCVClassificationLog`: the lines of GluonCV 0.10's
  ``scripts/classification/imagenet/train_imagenet.py``, field for field (batch index from 0,
  training metric and ``lr`` with ``%f``; validation ``err-top1=%f err-top5=%f`` separated by a
  space), with ``world``, ``global_batch`` and ``loss`` appended after a tab::

    Epoch[E] Batch [i]\\tSpeed: S samples/sec\\taccuracy=A\\tlr=L\\tworld=W\\tglobal_batch=G\\tloss=X
    [Epoch E] training: accuracy=A\\tworld=W\\tglobal_batch=G\\tloss=X
    [Epoch E] speed: S samples/sec\\ttime cost: T
    [Epoch E] validation: err-top1=E1 err-top5=E5

  A reader of GluonCV's lines that stops at its own last field reads them unchanged.

``Speed`` counts the samples of the whole (real or virtual) group per second, which is what
GluonCV's single-process script prints for its one process. :func:`parse_gluoncv_log` reads both
formats; it is written from GluonCV's printed format, not from this module's.

Imports no MXNet.
"""
import re

__all__ = ["RecipeLog", "GluonCVClassificationLog", "parse_gluoncv_log"]


class RecipeLog:
    """The recipes' default lines (see the module docstring).

    A log format has four methods, each returning one line of text: :meth:`batch`,
    :meth:`training`, :meth:`speed`, :meth:`validation`; and :meth:`start_epoch`, called by the
    loop before the first step of every epoch (or of what is left of it after a reset).
    """

    def start_epoch(self, epoch):
        """Nothing accumulates across steps here."""

    def batch(self, epoch, step_index, speed, lr, world_size, global_batch_size, loss):
        """The progress line after step ``step_index`` (0-based) of ``epoch``."""
        return ("Epoch[%d] Batch [%d]\tSpeed: %.2f samples/sec\tworld=%d\tglobal_batch=%d\t"
                "lr=%.6f\tloss=%.6f" % (epoch, step_index + 1, speed, world_size, global_batch_size,
                                        lr, loss))

    def training(self, epoch, loss, world_size, global_batch_size):
        """The end-of-epoch training line."""
        return "[Epoch %d] training: loss=%.6f\tworld=%d\tglobal_batch=%d" % (
            epoch, loss, world_size, global_batch_size)

    def speed(self, epoch, samples_per_second, seconds):
        """The end-of-epoch speed line (GluonCV's)."""
        return "[Epoch %d] speed: %d samples/sec\ttime cost: %f" % (
            epoch, int(samples_per_second), seconds)

    def validation(self, epoch, metrics):
        """The validation line: ``name=value`` pairs separated by tabs."""
        return "[Epoch %d] validation: %s" % (
            epoch, "\t".join("%s=%.6f" % (name, value) for name, value in metrics.items()))


class GluonCVClassificationLog(RecipeLog):
    """GluonCV's ImageNet lines with the training metric, world and global batch appended.

    Parameters
    ----------
    train_metric : mxnet.metric.EvalMetric
        Updated by the recipe's loss function on every (virtual) worker's batch; reset at the
        start of each epoch. Its name and value go where GluonCV prints them
        (``accuracy``; ``rmse`` with mixup).
    """

    def __init__(self, train_metric):
        self.train_metric = train_metric

    def start_epoch(self, epoch):
        """Reset the training metric: GluonCV reports it per epoch."""
        self.train_metric.reset()

    def _metric(self):
        name, value = self.train_metric.get()
        # An epoch that resumes at its very end has no batch yet: report 0 rather than nan.
        return name, value if value == value else 0.0

    def batch(self, epoch, step_index, speed, lr, world_size, global_batch_size, loss):
        name, value = self._metric()
        return ("Epoch[%d] Batch [%d]\tSpeed: %f samples/sec\t%s=%f\tlr=%f\tworld=%d\t"
                "global_batch=%d\tloss=%f" % (epoch, step_index, speed, name, value, lr, world_size,
                                              global_batch_size, loss))

    def training(self, epoch, loss, world_size, global_batch_size):
        name, value = self._metric()
        return "[Epoch %d] training: %s=%f\tworld=%d\tglobal_batch=%d\tloss=%f" % (
            epoch, name, value, world_size, global_batch_size, loss)

    def validation(self, epoch, metrics):
        """``err-top1=%f err-top5=%f``, separated by a space as GluonCV prints them."""
        return "[Epoch %d] validation: %s" % (
            epoch, " ".join("%s=%f" % (name, value) for name, value in metrics.items()))


# What GluonCV 0.10's train_imagenet.py prints (its format strings, read as patterns); anything
# after the last of its fields is taken as appended name=value fields.
_BATCH = re.compile(r"Epoch\[(\d+)\] Batch \[(\d+)\]\tSpeed: ([0-9.eE+-]+|inf|nan) samples/sec"
                    r"((?:\t[\w.-]+=[^\s]+)*)\s*$")
_EPOCH = re.compile(r"\[Epoch (\d+)\] (training|validation): (.*?)\s*$")
_SPEED = re.compile(r"\[Epoch (\d+)\] speed: (\d+) samples/sec\ttime cost: ([0-9.eE+-]+)\s*$")
_FIELD = re.compile(r"([\w.-]+)=([^\s]+)")


def _fields(text):
    return {name: float(value) for name, value in _FIELD.findall(text)}


def parse_gluoncv_log(text):
    """Records of every line in GluonCV's printed training-log format, in order.

    Parameters
    ----------
    text : str
        A log (timestamps or other prefixes before ``Epoch[`` / ``[Epoch`` are ignored).

    Returns
    -------
    list of dict
        ``{"kind": "batch", "epoch", "batch", "speed", <fields>}`` per progress line (``batch`` as
        printed), ``{"kind": "training" | "validation", "epoch", <fields>}`` and
        ``{"kind": "speed", "epoch", "speed", "time"}`` per end-of-epoch line; fields are the
        line's ``name=value`` pairs (``accuracy``, ``lr``, ``err-top1``, ``world``, ...) as floats.
    """
    records = []
    for line in text.splitlines():
        match = _BATCH.search(line)
        if match:
            records.append({"kind": "batch", "epoch": int(match.group(1)),
                            "batch": int(match.group(2)), "speed": float(match.group(3)),
                            **_fields(match.group(4))})
            continue
        match = _SPEED.search(line)
        if match:
            records.append({"kind": "speed", "epoch": int(match.group(1)),
                            "speed": float(match.group(2)), "time": float(match.group(3))})
            continue
        match = _EPOCH.search(line)
        if match:
            records.append({"kind": match.group(2), "epoch": int(match.group(1)),
                            **_fields(match.group(3))})
    return records
