"""GluonCV 0.10's detection command lines (``scripts/detection/ssd/train_ssd.py`` and
``yolo/train_yolo3.py``) on top of the detection recipe, ``scripts/detection/train_detection.py``.

:func:`add_gluoncv_args` adds GluonCV's flags with GluonCV's defaults to the recipe's parser;
:func:`resolve_args` turns them into the recipe's arguments (model name from ``--network``,
``--data-shape`` and ``--dataset``; data directory from ``--dataset-root``; device from
``--gpus``; backend from ``--horovod``) and ends with exit code 2 on bad input, before anything is
written. :class:`DetectionLoss` records GluonCV's per-component losses (``CrossEntropy`` and
``SmoothL1`` for SSD; ``ObjLoss``, ``BoxCenterLoss``, ``BoxScaleLoss``, ``ClassLoss`` for YOLOv3)
for the log lines of :class:`gluon_elastic.recipe_log.GluonCVDetectionLog`.

The batch size
--------------
GluonCV's detection ``--batch-size`` is the batch of one process (split over its ``--gpus``),
so it is the per-worker batch: ``--local-batch-size`` defaults to it, and both given with
different values exit 2.
"""
import os

from . import flags as _flags
from . import gluoncv_flags

__all__ = ["GLUONCV_DEFAULTS", "add_gluoncv_args", "resolve_args", "model_name", "DetectionLoss",
           "GluonCVDetectionOutputs"]

# GluonCV 0.10's defaults that differ between its two scripts.
GLUONCV_DEFAULTS = {
    "ssd": {"network": "vgg16_atrous", "data_shape": 300, "batch_size": 32, "epochs": 240,
            "lr_decay_epoch": "160,200"},
    "yolo3": {"network": "darknet53", "data_shape": 416, "batch_size": 64, "epochs": 200,
              "lr_decay_epoch": "160,180"},
}


def add_gluoncv_args(parser, kind):
    """Add the flags of GluonCV's ``train_ssd.py`` (``kind='ssd'``) or ``train_yolo3.py``
    (``'yolo3'``) that the recipe's parser lacks, and set GluonCV's defaults for the rest."""
    defaults = GLUONCV_DEFAULTS[kind]
    group = parser.add_argument_group("GluonCV %s flags" % ("SSD" if kind == "ssd" else "YOLOv3"))
    group.add_argument("--network", default=defaults["network"],
                       help="base network (default: %(default)s)")
    group.add_argument("--batch-size", type=_flags.positive_int, default=defaults["batch_size"],
                       help="batch of one process, split over --gpus (default: %(default)s)")
    group.add_argument("--dataset-root", default=os.path.join("~", ".mxnet", "datasets", ""),
                       help="directory holding voc/ or coco/ (default: %(default)s)")
    group.add_argument("--num-workers", dest="num_data_workers", type=_flags.non_negative_int,
                       help="data loader processes (same as -j)")
    group.add_argument("--gpus", default="0",
                       help="GPU ids, e.g. 0,1; '' for CPU; the default 0 falls back to the CPU "
                            "when no GPU is visible (default: %(default)s)")
    group.add_argument("--resume", default="", help="parameters to start from")
    group.add_argument("--start-epoch", type=_flags.non_negative_int, default=0,
                       help="epoch to start from (default: %(default)s)")
    group.add_argument("--save-prefix", default="",
                       help="prefix of saved files; the model name is appended (default: '')")
    group.add_argument("--save-interval", type=_flags.non_negative_int, default=10,
                       help="save parameters every this many epochs; the best is always saved "
                            "(default: %(default)s)")
    group.add_argument("--val-interval", type=_flags.positive_int, default=1,
                       help="validate every this many epochs (default: %(default)s)")
    group.add_argument("--syncbn", action="store_true",
                       help="synchronised BatchNorm across the devices of a process (one device "
                            "per process here: no effect)")
    group.add_argument("--amp", action="store_true", help="refused: AMP is not supported")
    group.add_argument("--horovod", action="store_true", help="same as --backend horovod")
    if kind == "ssd":
        group.add_argument("--dali", action="store_true", help="refused: DALI is not supported")
    else:
        group.add_argument("--num-samples", type=int, default=-1,
                           help="training images per epoch for the schedule; -1: the data set's")
        group.add_argument("--no-random-shape", action="store_true",
                           help="train at --data-shape only (default: a random side of 320 to "
                                "608 every 10 batches)")
        group.add_argument("--no-wd", action="store_true",
                           help="no weight decay on BatchNorm and bias parameters")
        group.add_argument("--mixup", action="store_true", help="mixup of image pairs")
        group.add_argument("--no-mixup-epochs", type=_flags.non_negative_int, default=20,
                           help="last epochs trained without mixup (default: %(default)s)")
        group.add_argument("--label-smooth", action="store_true",
                           help="label smoothing of the class targets")
    parser.set_defaults(data_shape=defaults["data_shape"], epochs=defaults["epochs"], lr=0.001,
                        wd=0.0005, momentum=0.9, log_interval=100, seed=233,
                        lr_decay_epoch=defaults["lr_decay_epoch"], warmup_lr=0.0, lr_power=2.0,
                        local_batch_size=None, model=None)
    return group


def model_name(kind, network, data_shape, dataset, zoo_names):
    """GluonCV's model name for the flags: ``ssd_<shape>_<network>_<dataset>`` (the zoo's shape
    nearest ``--data-shape`` when the zoo has no model at that shape) or
    ``yolo3_<network>_<dataset>``; None when the zoo has no such model."""
    if kind == "yolo3":
        name = "yolo3_%s_%s" % (network, dataset)
        return name if name in zoo_names else None
    exact = "ssd_%d_%s_%s" % (data_shape, network, dataset)
    if exact in zoo_names:
        return exact
    shapes = sorted(int(name.split("_")[1]) for name in zoo_names
                    if name.startswith("ssd_") and name.endswith("_%s_%s" % (network, dataset))
                    and name.split("_")[1].isdigit())
    if not shapes:
        return None
    # A smaller input (a scaled-down test) takes the zoo's model nearest its side; SSD's anchors
    # are laid out relative to the image, so the same model trains at any side.
    nearest = min(shapes, key=lambda shape: abs(shape - data_shape))
    return "ssd_%d_%s_%s" % (nearest, network, dataset)


def resolve_args(parser, args, kind, zoo_names, gpu_count):
    """Turn GluonCV's flags into the recipe's arguments; exit 2 on bad input.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    args : argparse.Namespace
    kind : {'ssd', 'yolo3'}
    zoo_names : list of str
        The detectors the recipe trains.
    gpu_count : int
        GPUs MXNet sees.
    """
    if args.amp:
        parser.error("--amp is not supported: AMP's loss scaling is not wired into "
                     "ElasticTrainer; train in float32")
    if getattr(args, "dali", False):
        parser.error("--dali is not supported: the recipe reads data with Gluon's DataLoader")
    if args.horovod:
        if args.backend not in ("device", "horovod"):
            parser.error("--horovod contradicts --backend %s" % args.backend)
        args.backend = "horovod"
    if args.model is None:
        args.model = model_name(kind, args.network, args.data_shape, args.dataset, zoo_names)
        if args.model is None:
            parser.error("--network %s with --dataset %s: the GluonCV model zoo has no %s model "
                         "of that name" % (args.network, args.dataset, kind.upper()))
    if args.data_dir is None:
        args.data_dir = os.path.join(os.path.expanduser(args.dataset_root), args.dataset)
    gluoncv_flags.resolve_local_batch_size(parser, args, num_devices=1)
    gpus = [item for item in args.gpus.split(",") if item.strip()]
    try:
        gpu_ids = [int(item) for item in gpus]
    except ValueError:
        parser.error("--gpus takes comma-separated GPU ids, got %r" % args.gpus)
    if gpu_ids and gpu_count == 0 and args.gpus != "0":
        parser.error("--gpus %s: no GPU is visible to MXNet (use --gpus '' for the CPU)"
                     % args.gpus)
    if args.device == "auto":
        args.device = "gpu" if gpu_ids and gpu_count else "cpu"
    prefix = (args.save_prefix or "") + args.model
    args.save_prefix = prefix
    gluoncv_flags.check_output_paths(
        parser, directories=[("--save-prefix", os.path.dirname(os.path.abspath(prefix))),
                             ("--checkpoint-dir", args.checkpoint_dir)],
        files=[("--save-prefix", prefix + "_train.log"), ("--metrics-file", args.metrics_file)])
    if args.resume and not os.path.isfile(args.resume.strip()):
        parser.error("--resume %s: no such file" % args.resume)
    if args.start_epoch >= args.epochs:
        parser.error("--start-epoch %d leaves nothing to train in --epochs %d"
                     % (args.start_epoch, args.epochs))
    return args


class DetectionLoss:
    """The recipe's ``loss_fn`` for GluonCV's SSD or YOLOv3 losses, recording each component.

    Per shard: SSD's multibox loss normalised by the worker's positive anchors (GluonCV), times the
    worker's batch so that the trainer's division by the global batch averages over workers;
    YOLOv3's four losses per image. ``metrics`` are ``mx.metric.Loss`` objects with GluonCV's
    names, reset at the start of each epoch by the log format.
    """

    def __init__(self, kind, ctx):
        import mxnet as mx
        from gluoncv import loss as gcv_loss

        self.kind, self.ctx = kind, ctx
        names = (("CrossEntropy", "SmoothL1") if kind == "ssd" else
                 ("ObjLoss", "BoxCenterLoss", "BoxScaleLoss", "ClassLoss"))
        self.metrics = [mx.metric.Loss(name) for name in names]
        self._multibox = gcv_loss.SSDMultiBoxLoss() if kind == "ssd" else None

    def __call__(self, net, shard):
        import mxnet as mx

        if self.kind == "yolo3":
            data = shard[0].as_in_context(self.ctx)
            targets = [array.as_in_context(self.ctx) for array in shard[1:6]]
            gt_boxes = shard[6].as_in_context(self.ctx)
            parts = net(data, gt_boxes, *targets)
            with mx.autograd.pause():
                for metric, part in zip(self.metrics, parts):
                    metric.update(0, part)
            return parts[0] + parts[1] + parts[2] + parts[3]
        data, cls_targets, box_targets = (array.as_in_context(self.ctx) for array in shard)
        cls_preds, box_preds, _ = net(data)
        sum_loss, cls_loss, box_loss = self._multibox([cls_preds], [box_preds], [cls_targets],
                                                      [box_targets])
        with mx.autograd.pause():
            self.metrics[0].update(0, cls_loss[0] * data.shape[0])
            self.metrics[1].update(0, box_loss[0] * data.shape[0])
        return sum_loss[0] * data.shape[0]


class GluonCVDetectionOutputs:
    """GluonCV's detection files, written by rank 0: ``PREFIX_best.params`` and a line in
    ``PREFIX_best_map.log`` whenever the validation mAP is the best so far, and
    ``PREFIX_EEEE_MAP.params`` every ``--save-interval`` epochs (epochs counted from 0, as
    GluonCV does). Without validation in an epoch (``--val-interval``) its mAP counts as 0."""

    def __init__(self, prefix, save_interval):
        self.prefix, self.save_interval = prefix, save_interval
        self.best_map = 0.0

    def on_epoch_end(self, epoch, net, trainer, metrics):
        """Save what GluonCV saves after ``epoch``; rank 0 only."""
        if trainer.rank != 0:
            return
        current_map = float(metrics.get("mAP", metrics.get("map", 0.0))) if metrics else 0.0
        directory = os.path.dirname(os.path.abspath(self.prefix))
        if current_map > self.best_map:
            self.best_map = current_map
            os.makedirs(directory, exist_ok=True)
            net.save_parameters("%s_best.params" % self.prefix)
            with open(self.prefix + "_best_map.log", "a") as fout:
                fout.write("%04d:\t%.4f\n" % (epoch, current_map))
        if self.save_interval and epoch % self.save_interval == 0:
            os.makedirs(directory, exist_ok=True)
            net.save_parameters("%s_%04d_%.4f.params" % (self.prefix, epoch, current_map))
