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

    Epoch[E] Batch [i]\\tSpeed: S samples/sec\\taccuracy=A\\tlr=L\\tworld=W\\t
        global_batch=G\\tloss=X   (one line)
    [Epoch E] training: accuracy=A\\tworld=W\\tglobal_batch=G\\tloss=X
    [Epoch E] speed: S samples/sec\\ttime cost: T
    [Epoch E] validation: err-top1=E1 err-top5=E5

  A reader of GluonCV's lines that stops at its own last field reads them unchanged.
* :class:`GluonCVDetectionLog`: the lines of GluonCV 0.10's ``train_ssd.py`` and
  ``train_yolo3.py`` (YOLOv3's with ``LR: %.2E``), fields separated by ``, ``, with ``world``,
  ``global_batch`` (and ``lr`` for SSD) appended the same way, one extra speed line per epoch,
  and GluonCV's validation block, one ``name=value`` line per class and the mean::

    [Epoch E][Batch i], Speed: S samples/sec, CrossEntropy=C, SmoothL1=L, world=W,
        global_batch=G, lr=R   (one line)
    [Epoch E] Training cost: T, CrossEntropy=C, SmoothL1=L, world=W, global_batch=G
    [Epoch E] speed: S samples/sec\\ttime cost: T
    [Epoch E] Validation:
    aeroplane=0.1
    mAP=0.1

* :class:`GluonCVSegmentationLog`: the lines of GluonCV 0.10's ``segmentation/train.py``
  (see the class).

``Speed`` counts the samples of the whole (real or virtual) group per second, which is what
GluonCV's single-process script prints for its one process. :func:`parse_gluoncv_log` reads
every format here; it is written from GluonCV's printed format, not from this module's.

Imports no MXNet.
"""
import re
import time

__all__ = ["RecipeLog", "GluonCVClassificationLog", "GluonCVDetectionLog",
           "GluonCVSegmentationLog", "parse_gluoncv_log"]


class RecipeLog:
    """The recipes' default lines (see the module docstring).

    A log format has four methods, each returning one line of text: :meth:`batch`,
    :meth:`training`, :meth:`speed`, :meth:`validation`; and :meth:`start_epoch`, called by the
    loop before the first step of every epoch (or of what is left of it after a reset).
    """

    def start_epoch(self, epoch):
        """Nothing accumulates across steps here."""

    def training_metrics(self):
        """The training metrics of the epoch so far, ``{name: value}`` (none here)."""
        return {}

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

    def training_metrics(self):
        """GluonCV's running training metric of the epoch (``accuracy``, or ``rmse`` with mixup)."""
        name, value = self._metric()
        return {name: value}

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


class GluonCVDetectionLog(RecipeLog):
    """GluonCV's SSD / YOLOv3 / Faster R-CNN lines with world, global batch (and LR) appended.

    Parameters
    ----------
    loss_metrics : list of mxnet.metric.Loss
        GluonCV's per-component losses, updated by the recipe's loss function; reset at the start
        of each epoch.
    show_lr : bool
        Print ``LR: %.2E`` after the batch index (YOLOv3's line) rather than ``lr=`` at the end.
    extra_metrics : list of mxnet.metric.EvalMetric, optional
        Printed after the losses in the batch lines only, never reset (Faster R-CNN's accuracy
        metrics, as its script keeps them).
    separator : str
        Between ``name=value`` fields: ``', '`` as SSD and YOLOv3 print them, ``','`` as Faster
        R-CNN does.
    """

    def __init__(self, loss_metrics, show_lr=False, extra_metrics=(), separator=", "):
        self.loss_metrics, self.show_lr = loss_metrics, show_lr
        self.extra_metrics, self.separator = list(extra_metrics), separator
        self._epoch_start = time.time()

    def start_epoch(self, epoch):
        """Reset the loss metrics (GluonCV reports them per epoch) and the epoch's clock."""
        self._epoch_start = time.time()
        for metric in self.loss_metrics:
            metric.reset()

    def training_metrics(self):
        """GluonCV's running per-component losses of the epoch."""
        values = {}
        for metric in self.loss_metrics:
            name, value = metric.get()
            values[name] = value if value == value else 0.0
        return values

    def _losses(self, metrics=None):
        pairs = []
        for metric in self.loss_metrics if metrics is None else metrics:
            name, value = metric.get()
            pairs.append("%s=%.3f" % (name, value if value == value else 0.0))
        return self.separator.join(pairs)

    def batch(self, epoch, step_index, speed, lr, world_size, global_batch_size, loss):
        head = "[Epoch %d][Batch %d], " % (epoch, step_index)
        fields = self._losses(self.loss_metrics + self.extra_metrics)
        if self.show_lr:
            return head + "LR: %.2E, Speed: %.3f samples/sec, %s, world=%d, global_batch=%d" % (
                lr, speed, fields, world_size, global_batch_size)
        return head + "Speed: %.3f samples/sec, %s, world=%d, global_batch=%d, lr=%f" % (
            speed, fields, world_size, global_batch_size, lr)

    def training(self, epoch, loss, world_size, global_batch_size):
        """GluonCV's ``Training cost`` line: seconds since :meth:`start_epoch`, epoch losses."""
        return "[Epoch %d] Training cost: %.3f, %s, world=%d, global_batch=%d" % (
            epoch, time.time() - self._epoch_start, self._losses(), world_size, global_batch_size)

    def validation(self, epoch, metrics):
        """GluonCV's block: a header line, then one ``name=value`` line per metric."""
        return "[Epoch %d] Validation: \n%s" % (
            epoch, "\n".join("%s=%s" % (name, value) for name, value in metrics.items()))


# What GluonCV 0.10's train_imagenet.py prints (its format strings, read as patterns); anything
# after the last of its fields is taken as appended name=value fields.
_BATCH = re.compile(r"Epoch\[(\d+)\] Batch \[(\d+)\]\tSpeed: ([0-9.eE+-]+|inf|nan) samples/sec"
                    r"((?:\t[\w.-]+=[^\s]+)*)\s*$")
_EPOCH = re.compile(r"\[Epoch (\d+)\] (training|validation): (.*?)\s*$")
_SPEED = re.compile(r"\[Epoch (\d+)\] speed: (\d+) samples/sec\ttime cost: ([0-9.eE+-]+)\s*$")
_FIELD = re.compile(r"([\w.-]+)=([^\s,]+)")
# GluonCV 0.10's detection scripts (train_ssd.py, train_yolo3.py).
_DET_BATCH = re.compile(r"\[Epoch (\d+)\]\[Batch (\d+)\], (?:LR: ([0-9.eE+-]+), )?Speed: "
                        r"([0-9.eE+-]+|inf|nan) samples/sec, (.*?)\s*$")
_DET_COST = re.compile(r"\[Epoch (\d+)\] Training cost: ([0-9.eE+-]+), (.*?)\s*$")
_DET_VALIDATION = re.compile(r"\[Epoch (\d+)\] Validation:\s*$")
# GluonCV 0.10's segmentation/train.py.
_SEG_BATCH = re.compile(r"Epoch (\d+) iteration (\d+)/(\d+): training loss ([0-9.eE+-]+|nan)"
                        r"(.*?)\s*$")
_SEG_TRAINING = re.compile(r"Epoch (\d+), training loss ([0-9.eE+-]+|nan)(.*?)\s*$")
_SEG_VALIDATION = re.compile(r"Epoch (\d+),? validation pixAcc: ([0-9.eE+-]+|nan), mIoU: "
                             r"([0-9.eE+-]+|nan)(.*?)\s*$")
_DET_VALUE = re.compile(r"^([^=\s][^=]*)=([0-9.eE+-]+|nan)\s*$")


def _fields(text):
    return {name: float(value) for name, value in _FIELD.findall(text)}


def parse_gluoncv_log(text):
    """Records of every line in GluonCV's printed training-log format, in order.

    Parameters
    ----------
    text : str
        A log (timestamps or other prefixes before ``Epoch[`` / ``[Epoch`` are ignored).

    Reads the classification lines (``Epoch[E] Batch [i]\tSpeed: ...``), the detection
    lines (``[Epoch E][Batch i], Speed: ...``, ``[Epoch E] Training cost: T, ...`` and the
    ``[Epoch E] Validation:`` block of ``name=value`` lines) and the segmentation lines
    (``Epoch E iteration I/N: training loss X``, ``Epoch E validation pixAcc: P, mIoU: M``).

    Returns
    -------
    list of dict
        ``{"kind": "batch", "epoch", "batch", "speed", <fields>}`` per progress line (``batch`` as
        printed), ``{"kind": "training" | "validation", "epoch", <fields>}`` and
        ``{"kind": "speed", "epoch", "speed", "time"}`` per end-of-epoch line; fields are the
        line's ``name=value`` pairs (``accuracy``, ``lr``, ``err-top1``, ``world``, ...) as floats.
    """
    records = []
    validation = None   # the open record of a detection validation block
    for line in text.splitlines():
        if validation is not None:
            match = _DET_VALUE.match(line)
            if match:
                validation[match.group(1)] = float(match.group(2))
                continue
            validation = None
        match = _SEG_BATCH.search(line)
        if match:
            records.append({"kind": "batch", "epoch": int(match.group(1)),
                            "batch": int(match.group(2)), "batches": int(match.group(3)),
                            "loss": float(match.group(4)), **_fields(match.group(5))})
            continue
        match = _SEG_VALIDATION.search(line)
        if match:
            records.append({"kind": "validation", "epoch": int(match.group(1)),
                            "pixAcc": float(match.group(2)), "mIoU": float(match.group(3)),
                            **_fields(match.group(4))})
            continue
        match = _SEG_TRAINING.search(line)
        if match:
            records.append({"kind": "training", "epoch": int(match.group(1)),
                            "loss": float(match.group(2)), **_fields(match.group(3))})
            continue
        match = _DET_BATCH.search(line)
        if match:
            record = {"kind": "batch", "epoch": int(match.group(1)), "batch": int(match.group(2)),
                      "speed": float(match.group(4)), **_fields(match.group(5))}
            if match.group(3):
                record["lr"] = float(match.group(3))
            records.append(record)
            continue
        match = _DET_COST.search(line)
        if match:
            records.append({"kind": "training", "epoch": int(match.group(1)),
                            "time": float(match.group(2)), **_fields(match.group(3))})
            continue
        match = _DET_VALIDATION.search(line)
        if match:
            validation = {"kind": "validation", "epoch": int(match.group(1))}
            records.append(validation)
            continue
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


class GluonCVSegmentationLog(RecipeLog):
    """GluonCV 0.10's ``segmentation/train.py`` lines with world, global batch and LR appended::

        Epoch E iteration IIII/NNNN: training loss X, world=W, global_batch=G, lr=L
        Epoch E, training loss X, world=W, global_batch=G
        [Epoch E] speed: S samples/sec\\ttime cost: T
        Epoch E validation pixAcc: P, mIoU: M, world=W, global_batch=G

    Parameters
    ----------
    steps_per_epoch : callable
        ``steps_per_epoch(global_batch_size)``: the ``NNNN`` of the progress line in the current
        world.
    """

    def __init__(self, steps_per_epoch):
        self.steps_per_epoch = steps_per_epoch
        self._world = (0, 0)

    def batch(self, epoch, step_index, speed, lr, world_size, global_batch_size, loss):
        return ("Epoch %d iteration %04d/%04d: training loss %.3f, world=%d, global_batch=%d, "
                "lr=%f" % (epoch, step_index, self.steps_per_epoch(global_batch_size), loss,
                           world_size, global_batch_size, lr))

    def training(self, epoch, loss, world_size, global_batch_size):
        self._world = (world_size, global_batch_size)
        return "Epoch %d, training loss %.3f, world=%d, global_batch=%d" % (
            epoch, loss, world_size, global_batch_size)

    def validation(self, epoch, metrics):
        return "Epoch %d validation pixAcc: %.3f, mIoU: %.3f, world=%d, global_batch=%d" % (
            (epoch, metrics["pixAcc"], metrics["mIoU"]) + self._world)
