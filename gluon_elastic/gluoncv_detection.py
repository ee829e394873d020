"""GluonCV 0.10's detection command lines (``scripts/detection/ssd/train_ssd.py``,
``yolo/train_yolo3.py`` and ``faster_rcnn/train_faster_rcnn.py``) on top of the detection recipe,
``scripts/detection/train_detection.py``.

:func:`add_gluoncv_args` adds GluonCV's flags with GluonCV's defaults to the recipe's parser;
:func:`resolve_args` turns them into the recipe's arguments (model name from ``--network``,
``--data-shape``, ``--dataset`` and, for Faster R-CNN, ``--use-fpn`` and ``--norm-layer``; data
directory from ``--dataset-root``; device from ``--gpus``; backend from ``--horovod`` or
``--kv-store``) and ends with exit code 2 on bad input, before anything is written.
:class:`DetectionLoss` computes GluonCV's losses and records each component (``CrossEntropy`` and
``SmoothL1`` for SSD; ``ObjLoss``, ``BoxCenterLoss``, ``BoxScaleLoss``, ``ClassLoss`` for YOLOv3;
``RPN_Conf``, ``RPN_SmoothL1``, ``RCNN_CrossEntropy``, ``RCNN_SmoothL1`` and the accuracy metrics
of :mod:`gluoncv.utils.metrics.rcnn` for Faster R-CNN) for the log lines of
:class:`gluon_elastic.recipe_log.GluonCVDetectionLog`.

The batch size
--------------
GluonCV's detection ``--batch-size`` is the batch of one process (split over its ``--gpus``),
so it is the per-worker batch: ``--local-batch-size`` defaults to it, and both given with
different values exit 2. (GluonCV's Faster R-CNN script divides ``--batch-size`` by the number of
workers under ``--horovod``; here it stays the batch of one worker, whatever the world.)

Faster R-CNN's sizes
--------------------
The zoo's Faster R-CNN models fix their sizes (short side 600 or 800, 12000/2000 RPN proposals
before/after NMS in training, ...), as GluonCV's script builds them. GluonCV's ``custom-model``
subcommand takes every size as a flag (``--image-short``, ``--image-max-size``,
``--rpn-train-pre-nms``, ``--rcnn-num-samples``, ...); the recipe builds that model, a Faster R-CNN
with FPN on ``--network``, with exactly those settings, which is how a run is scaled down to tiny
images. GluonCV 0.10.5's model zoo maps the name ``custom_faster_rcnn_fpn`` to the double-head
R-CNN's builder (a wildcard import shadows Faster R-CNN's), whose box head fails with FPN box
features; the recipe calls Faster R-CNN's own builder, the one GluonCV's script means.
"""
import os

from . import devices
from . import flags as _flags
from . import gluoncv_flags

__all__ = ["GLUONCV_DEFAULTS", "FASTER_RCNN_NETWORKS", "FASTER_RCNN_DATASET_DEFAULTS",
           "add_gluoncv_args", "resolve_args", "model_name", "faster_rcnn_name",
           "build_faster_rcnn", "FasterRCNNBatchify", "DetectionLoss", "interval_due",
           "GluonCVDetectionOutputs"]

# GluonCV 0.10's defaults that differ between its scripts.
GLUONCV_DEFAULTS = {
    "ssd": {"network": "vgg16_atrous", "data_shape": 300, "batch_size": 32, "epochs": 240,
            "lr_decay_epoch": "160,200", "save_interval": 10},
    "yolo3": {"network": "darknet53", "data_shape": 416, "batch_size": 64, "epochs": 200,
              "lr_decay_epoch": "160,180", "save_interval": 10},
    "faster_rcnn": {"network": "resnet50_v1b", "batch_size": 1, "save_interval": 1},
}
# GluonCV's Faster R-CNN script: its --network choices, and the defaults it sets after parsing
# from --dataset when --epochs, --lr, --lr-decay-epoch, --lr-warmup or --wd are not given.
FASTER_RCNN_NETWORKS = ("resnet18_v1b", "resnet50_v1b", "resnet101_v1d", "resnest50",
                        "resnest101", "resnest269")
FASTER_RCNN_DATASET_DEFAULTS = {
    "voc": {"epochs": 20, "lr_decay_epoch": "14,20", "lr": 0.001, "lr_warmup": -1, "wd": 5e-4},
    "coco": {"epochs": 26, "lr_decay_epoch": "17,23", "lr": 0.00125, "lr_warmup": 1000,
             "wd": 1e-4},
}
_KIND_TITLES = {"ssd": "SSD", "yolo3": "YOLOv3", "faster_rcnn": "Faster R-CNN"}


def add_gluoncv_args(parser, kind):
    """Add the flags of GluonCV's ``train_ssd.py`` (``kind='ssd'``), ``train_yolo3.py``
    (``'yolo3'``) or ``train_faster_rcnn.py`` (``'faster_rcnn'``) that the recipe's parser lacks,
    and set GluonCV's defaults for the rest."""
    defaults = GLUONCV_DEFAULTS[kind]
    group = parser.add_argument_group("GluonCV %s flags" % _KIND_TITLES[kind])
    if kind == "faster_rcnn":
        group.add_argument("--network", default=defaults["network"], choices=FASTER_RCNN_NETWORKS,
                           help="base network (default: %(default)s)")
    else:
        group.add_argument("--network", default=defaults["network"],
                           help="base network (default: %(default)s)")
    gluoncv_flags.add_batch_size_arg(parser, group, defaults["batch_size"],
                                     "batch of one process, split over --gpus")
    if kind != "faster_rcnn":
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
    group.add_argument("--save-interval", type=_flags.non_negative_int,
                       default=defaults["save_interval"],
                       help="save parameters every this many epochs; the best is always saved "
                            "(default: %(default)s)")
    group.add_argument("--val-interval", type=_flags.positive_int, default=1,
                       help="validate every this many epochs (default: %(default)s)")
    group.add_argument("--amp", action="store_true", help="refused: AMP is not supported")
    group.add_argument("--horovod", action="store_true", help="same as --backend horovod")
    if kind == "faster_rcnn":
        _add_faster_rcnn_args(parser, group)
        return group
    group.add_argument("--syncbn", action="store_true",
                       help="SyncBatchNorm over the devices of a process when it has several "
                            "(workers normalise separately)")
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
                        model=None)
    return group


def _add_faster_rcnn_args(parser, group):
    """GluonCV's Faster R-CNN flags, and its ``custom-model`` subcommand with the model's sizes."""
    group.add_argument("--lr-warmup", type=int, default=None,
                       help="iterations of linear warmup in epoch 0 (default: -1, none, for voc; "
                            "1000 for coco)")
    group.add_argument("--lr-warmup-factor", type=_flags.non_negative_float, default=1. / 3.,
                       help="warmup starts at this factor of --lr (default: 1/3)")
    group.add_argument("--verbose", action="store_true", help="log the trainable parameters")
    group.add_argument("--mixup", action="store_true", help="mixup of image pairs")
    group.add_argument("--no-mixup-epochs", type=_flags.non_negative_int, default=20,
                       help="last epochs trained without mixup (default: %(default)s)")
    group.add_argument("--norm-layer", default=None, choices=(None, "syncbn"),
                       help="None: frozen BatchNorm in the backbone; syncbn: the zoo's syncbn "
                            "model, SyncBatchNorm over the devices of a process")
    group.add_argument("--rpn-smoothl1-rho", type=_flags.non_negative_float, default=1. / 9.,
                       help="RPN box loss: transition point from L1 to L2 (default: 1/9)")
    group.add_argument("--rcnn-smoothl1-rho", type=_flags.non_negative_float, default=1.,
                       help="R-CNN box loss: transition point from L1 to L2 (default: 1)")
    group.add_argument("--use-fpn", action="store_true", help="feature pyramid network")
    group.add_argument("--disable-hybridization", action="store_true",
                       help="train imperatively")
    group.add_argument("--static-alloc", action="store_true",
                       help="hybridize with static memory allocation")
    group.add_argument("--executor-threads", type=_flags.positive_int, default=1,
                       help="accepted: the devices' passes are queued on MXNet's engine from "
                            "one thread, which runs them in parallel (default: %(default)s)")
    group.add_argument("--kv-store", default="nccl",
                       help="nccl, device, local: this process's store; "
                            "dist_sync, dist_device_sync: the --backend (default: %(default)s)")
    subparsers = parser.add_subparsers(dest="custom_model")
    custom = subparsers.add_parser(
        "custom-model", help="Faster R-CNN with FPN whose sizes are the flags below (GluonCV's "
                             "expert settings; the defaults are for COCO)")
    custom.add_argument("--no-pretrained-base", action="store_true",
                        help="accepted: the recipe always trains the base network from scratch")
    for flag, kind, default, text in (
            ("--num-fpn-filters", int, 256, "filters of the FPN output layers"),
            ("--num-box-head-conv", int, 4, "convolutions of the box head (unfrozen BatchNorm)"),
            ("--num-box-head-conv-filters", int, 256, "filters of those convolutions"),
            ("--num_box_head_dense_filters", int, 1024, "units of the box head's dense layer"),
            ("--image-short", str, "800", "short side; a,b: random in [a, b] in training"),
            ("--image-max-size", int, 1333, "longest side"),
            ("--nms-thresh", float, 0.5, "R-CNN NMS threshold"),
            ("--nms-topk", int, -1, "R-CNN NMS on the top k (-1: all)"),
            ("--post-nms", int, -1, "detections kept after NMS (-1: all)"),
            ("--roi-size", str, "7,7", "ROI output size"),
            ("--strides", str, "4,8,16,32,64", "feature strides"),
            ("--clip", float, 4.14, "clip of box predictions before exp"),
            ("--rpn-channel", int, 256, "RPN convolution channels"),
            ("--anchor-base-size", int, 16, "side of the reference anchor"),
            ("--anchor-aspect-ratio", str, "0.5,1,2", "anchor aspect ratios"),
            ("--anchor-scales", str, "2,4,8,16,32", "anchor scales of the base size"),
            ("--anchor-alloc-size", str, "384,384", "anchor map allocated, H,W"),
            ("--rpn-nms-thresh", float, 0.7, "RPN NMS threshold"),
            ("--rpn-train-pre-nms", int, 12000, "RPN proposals before NMS, training"),
            ("--rpn-train-post-nms", int, 2000, "RPN proposals after NMS, training"),
            ("--rpn-test-pre-nms", int, 6000, "RPN proposals before NMS, testing"),
            ("--rpn-test-post-nms", int, 1000, "RPN proposals after NMS, testing"),
            ("--rpn-min-size", int, 1, "smallest proposal side"),
            ("--rcnn-num-samples", int, 512, "R-CNN samples per image"),
            ("--rcnn-pos-iou-thresh", float, 0.5, "IoU of a positive R-CNN sample"),
            ("--rcnn-pos-ratio", float, 0.25, "share of positive R-CNN samples"),
            ("--max-num-gt", int, 100, "bound on the boxes of an image")):
        custom.add_argument(flag, type=kind, default=default,
                            help="%s (default: %s)" % (text, default))
    custom.add_argument("--roi-mode", default="align", choices=("align", "pool"),
                        help="ROI pooling mode (default: %(default)s)")
    # GluonCV's dataset-dependent defaults are set after parsing (resolve_args).
    parser.set_defaults(epochs=None, lr=None, wd=None, lr_decay_epoch=None, data_shape=None,
                        momentum=0.9, log_interval=100, seed=233, lr_mode="step", model=None)


# The custom model's flags that take comma-separated numbers (a single number stays a number).
_CUSTOM_LISTS = {"image_short": int, "roi_size": int, "strides": int, "anchor_aspect_ratio": float,
                 "anchor_scales": float, "anchor_alloc_size": int}


def faster_rcnn_name(args):
    """GluonCV's name for the Faster R-CNN flags: ``faster_rcnn[_fpn][_syncbn]_NETWORK_DATASET``,
    or ``custom_faster_rcnn_fpn_NETWORK_DATASET`` with ``custom-model``."""
    if args.custom_model:
        return "custom_faster_rcnn_fpn_%s_%s" % (args.network, args.dataset)
    modules = (["fpn"] if args.use_fpn else []) + ([args.norm_layer] if args.norm_layer else [])
    return "_".join(["faster_rcnn"] + modules + [args.network, args.dataset])


def _resolve_faster_rcnn(parser, args, zoo_names):
    for name, value in FASTER_RCNN_DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.custom_model:
        args.use_fpn = True   # GluonCV's custom model is an FPN
        for name, kind in _CUSTOM_LISTS.items():
            flag = "--" + name.replace("_", "-")
            try:
                values = [kind(item) for item in getattr(args, name).split(",")]
            except ValueError:
                parser.error("%s takes comma-separated numbers, got %r"
                             % (flag, getattr(args, name)))
            setattr(args, name, values[0] if len(values) == 1 else values)
        short = args.image_short
    else:
        name = faster_rcnn_name(args)
        if name not in zoo_names:
            parser.error("--network %s%s%s with --dataset %s: the GluonCV model zoo has no %s "
                         "(Faster R-CNN models: %s)"
                         % (args.network, " --use-fpn" if args.use_fpn else "",
                            " --norm-layer %s" % args.norm_layer if args.norm_layer else "",
                            args.dataset, name, ", ".join(zoo_names)))
        short = None
    args.model = faster_rcnn_name(args)
    if args.data_shape is not None:
        parser.error("--data-shape: Faster R-CNN resizes each image by its short side (the "
                     "model's, or custom-model's --image-short)")
    # The side of the synthetic data and of the shape-resolving forward pass.
    args.data_shape = max(short) if isinstance(short, list) else short
    if args.batch_policy != "fixed_local":
        parser.error("--batch-policy %s: Faster R-CNN is built for a fixed per-worker batch "
                     "(its target sampler has one slot per image)" % args.batch_policy)
    if args.kv_store in ("dist_sync", "dist_device_sync"):
        if args.backend not in ("device", args.kv_store):
            parser.error("--kv-store %s contradicts --backend %s" % (args.kv_store, args.backend))
        args.backend = args.kv_store
    elif args.kv_store not in ("nccl", "device", "local"):
        parser.error("--kv-store %s: use nccl, device, local, dist_sync or dist_device_sync (or "
                     "--horovod)" % args.kv_store)
    # Linear warmup over --lr-warmup iterations of the starting world, from --lr-warmup-factor
    # times --lr (train_gluoncv turns the iterations into samples once the world is known).
    args.warmup_lr = args.lr * args.lr_warmup_factor
    args.warmup_epochs = 0.0
    args.lr_power = 2.0


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
    kind : {'ssd', 'yolo3', 'faster_rcnn'}
    zoo_names : list of str
        The detectors of that kind in the GluonCV model zoo.
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
    if kind == "faster_rcnn":
        _resolve_faster_rcnn(parser, args, zoo_names)
    elif args.model is None:
        args.model = model_name(kind, args.network, args.data_shape, args.dataset, zoo_names)
        if args.model is None:
            parser.error("--network %s with --dataset %s: the GluonCV model zoo has no %s model "
                         "of that name" % (args.network, args.dataset, kind.upper()))
    if args.data_dir is None:
        # GluonCV's Faster R-CNN script has no --dataset-root: its data sets' default roots.
        root = getattr(args, "dataset_root", os.path.join("~", ".mxnet", "datasets"))
        args.data_dir = os.path.join(os.path.expanduser(root), args.dataset)
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
    if args.device == "gpu" and gpu_ids:
        # The ids count the GPUs of each process; which ones follows the local-rank rule of
        # gluon_elastic.devices (GluonCV's 0..N-1 for one process per host).
        if args.num_gpus not in (0, len(gpu_ids)):
            parser.error("--num-gpus %d contradicts --gpus %s (%d GPUs per process)"
                         % (args.num_gpus, args.gpus, len(gpu_ids)))
        args.num_gpus = len(gpu_ids)
    num_devices = max(1, args.num_gpus)
    for flag, synchronised in (("--syncbn", getattr(args, "syncbn", False) and num_devices > 1),
                               ("--norm-layer syncbn", getattr(args, "norm_layer", None)
                                == "syncbn")):
        if synchronised:
            devices.check_sync_batch_norm(parser, flag, args.local_batch_size, num_devices,
                                          args.device)
    if kind == "faster_rcnn" and args.local_batch_size % num_devices:
        # The R-CNN target sampler has one slot per image of a device's forward pass, so every
        # device takes the same share of the batch (GluonCV asserts the same).
        parser.error("Faster R-CNN splits the per-worker batch evenly over the devices: batch %d "
                     "on %d devices" % (args.local_batch_size, num_devices))
    if kind == "faster_rcnn" and args.use_fpn and args.device == "cpu" and \
            getattr(args, "roi_mode", "align") == "align":
        # GluonCV's FPN pooling runs ROIAlign on every level with the ROIs of other levels given
        # batch index -1; for such a ROI MXNet 1.9.1's CPU kernel writes one zero (at the ROI's
        # number, not its output block) and leaves its output unset (seen: values up to 1e26,
        # and NaN), where the GPU kernel zeroes every element.
        parser.error("--use-fpn with ROIAlign on the CPU: MXNet's CPU ROIAlign corrupts GluonCV's "
                     "FPN pooling; train on a GPU, or use custom-model --roi-mode pool")
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


def build_faster_rcnn(args, classes, contexts):
    """GluonCV's Faster R-CNN for the flags, from scratch (nothing is downloaded), initialised on
    the devices of ``contexts`` with its shapes resolved and only GluonCV's trainable parameters
    taking gradients.

    A zoo model (``args.model``) at the zoo's sizes, or with ``custom-model`` Faster R-CNN's FPN
    builder with every size from the flags, as GluonCV's script builds them. The target sampler
    has one slot per image of a forward pass: ``per_device_batch_size`` is the per-worker batch
    over the number of devices.
    """
    import mxnet as mx
    from gluoncv import model_zoo
    from gluoncv.model_zoo.rcnn.faster_rcnn import faster_rcnn as faster_rcnn_module
    from mxnet import gluon

    if args.custom_model:
        if args.norm_layer == "syncbn":
            norm_layer, norm_kwargs = gluon.contrib.nn.SyncBatchNorm, {
                "num_devices": len(contexts)}
            sym_norm_kwargs = {"ndev": len(contexts)}
        else:
            norm_layer, norm_kwargs, sym_norm_kwargs = gluon.nn.BatchNorm, None, None
        net = faster_rcnn_module.custom_faster_rcnn_fpn(
            list(classes), transfer=None, dataset=args.dataset, pretrained_base=False,
            base_network_name=args.network, norm_layer=norm_layer, norm_kwargs=norm_kwargs,
            sym_norm_kwargs=sym_norm_kwargs, num_fpn_filters=args.num_fpn_filters,
            num_box_head_conv=args.num_box_head_conv,
            num_box_head_conv_filters=args.num_box_head_conv_filters,
            num_box_head_dense_filters=args.num_box_head_dense_filters,
            short=args.image_short, max_size=args.image_max_size, min_stage=2, max_stage=6,
            nms_thresh=args.nms_thresh, nms_topk=args.nms_topk, post_nms=args.post_nms,
            roi_mode=args.roi_mode, roi_size=args.roi_size, strides=args.strides, clip=args.clip,
            rpn_channel=args.rpn_channel, base_size=args.anchor_base_size,
            scales=args.anchor_scales, ratios=args.anchor_aspect_ratio,
            alloc_size=args.anchor_alloc_size, rpn_nms_thresh=args.rpn_nms_thresh,
            rpn_train_pre_nms=args.rpn_train_pre_nms, rpn_train_post_nms=args.rpn_train_post_nms,
            rpn_test_pre_nms=args.rpn_test_pre_nms, rpn_test_post_nms=args.rpn_test_post_nms,
            rpn_min_size=args.rpn_min_size,
            per_device_batch_size=args.local_batch_size // len(contexts),
            num_sample=args.rcnn_num_samples, pos_iou_thresh=args.rcnn_pos_iou_thresh,
            pos_ratio=args.rcnn_pos_ratio, max_num_gt=args.max_num_gt)
    else:
        kwargs = {"num_devices": len(contexts)} if args.norm_layer == "syncbn" else {}
        net = model_zoo.get_model(args.model, pretrained=False, pretrained_base=False,
                                  per_device_batch_size=args.local_batch_size // len(contexts),
                                  **kwargs)
        if tuple(net.classes) != tuple(classes):
            net.reset_class(list(classes))
    # As GluonCV: initialise what has no data yet (the FPN's symbol block may), then move all.
    for param in net.collect_params().values():
        if param._data is None:  # pylint: disable=protected-access
            param.initialize(ctx=contexts)
    net.collect_params().reset_ctx(contexts)
    # The R-CNN target generator is made on first use; made now, it is part of the model
    # before the trainer and the elastic state collect the parameters.
    net.target_generator.collect_params().reset_ctx(contexts)
    net.collect_params().setattr("grad_req", "null")
    for param in net.collect_train_params().values():
        if not isinstance(param, gluon.Constant):   # anchors stay constant
            param.grad_req = "write"
    short = args.image_short if args.custom_model else net.short
    side = max(short) if isinstance(short, (list, tuple)) else short
    net(mx.nd.zeros((1, 3, side, side), ctx=contexts[0]))   # inference: resolves every shape
    return net


class FasterRCNNBatchify:
    """GluonCV's ``FasterRCNNTrainBatchify`` as one batch of five arrays: images and labels
    padded to the largest of the batch, RPN targets padded to its feature maps.

    One shard: the recipe's loop splits each step's arrays over workers and devices along axis
    0. A class (not a closure) because data loader processes receive it pickled.
    """

    def __init__(self, net):
        from gluoncv.data.batchify import FasterRCNNTrainBatchify

        self._batchify = FasterRCNNTrainBatchify(net, num_shards=1)

    def __call__(self, samples):
        images, labels, cls_targets, box_targets, box_masks = self._batchify(samples)
        return images, labels, cls_targets[0], box_targets[0], box_masks[0]


class DetectionLoss:
    """The recipe's ``loss_fn`` for GluonCV's SSD, YOLOv3 or Faster R-CNN losses, recording each
    component.

    Per shard: SSD's multibox loss normalised by the worker's positive anchors (GluonCV), times the
    worker's batch so that the trainer's division by the global batch averages over workers;
    YOLOv3's four losses per image; Faster R-CNN's RPN and R-CNN losses per image, each normalised
    by the worker's sampled anchors or proposals as GluonCV normalises them per device, times
    ``mix_ratio`` (0.5 while ``--mixup`` mixes, else 1). ``metrics`` are ``mx.metric.Loss``
    objects with GluonCV's names, reset at the start of each epoch by the log format;
    ``extra_metrics`` are Faster R-CNN's accuracy metrics (GluonCV never resets them).

    Called once per device with that device's part of a worker's batch, already on the device.

    Parameters
    ----------
    kind : {'ssd', 'yolo3', 'faster_rcnn'}
    rpn_smoothl1_rho, rcnn_smoothl1_rho : float
        Faster R-CNN's box losses: transition points from L1 to L2.
    """

    def __init__(self, kind, rpn_smoothl1_rho=1. / 9., rcnn_smoothl1_rho=1.):
        import mxnet as mx
        from gluoncv import loss as gcv_loss

        self.kind = kind
        names = {"ssd": ("CrossEntropy", "SmoothL1"),
                 "yolo3": ("ObjLoss", "BoxCenterLoss", "BoxScaleLoss", "ClassLoss"),
                 "faster_rcnn": ("RPN_Conf", "RPN_SmoothL1", "RCNN_CrossEntropy",
                                 "RCNN_SmoothL1")}[kind]
        self.metrics = [mx.metric.Loss(name) for name in names]
        self.extra_metrics = []
        self.mix_ratio = 1.0
        self._multibox = gcv_loss.SSDMultiBoxLoss() if kind == "ssd" else None
        if kind == "faster_rcnn":
            from gluoncv.utils.metrics import rcnn

            losses = mx.gluon.loss
            self._rpn_cls = losses.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
            self._rpn_box = losses.HuberLoss(rho=rpn_smoothl1_rho)   # smooth L1
            self._rcnn_cls = losses.SoftmaxCrossEntropyLoss()
            self._rcnn_box = losses.HuberLoss(rho=rcnn_smoothl1_rho)
            self.extra_metrics = [rcnn.RPNAccMetric(), rcnn.RPNL1LossMetric(),
                                  rcnn.RCNNAccMetric(), rcnn.RCNNL1LossMetric()]

    def __call__(self, net, shard):
        import mxnet as mx

        if self.kind == "faster_rcnn":
            return self._faster_rcnn(net, shard)
        if self.kind == "yolo3":
            data, targets, gt_boxes = shard[0], shard[1:6], shard[6]
            parts = net(data, gt_boxes, *targets)
            with mx.autograd.pause():
                for metric, part in zip(self.metrics, parts):
                    metric.update(0, part)
            return parts[0] + parts[1] + parts[2] + parts[3]
        data, cls_targets, box_targets = shard
        cls_preds, box_preds, _ = net(data)
        sum_loss, cls_loss, box_loss = self._multibox([cls_preds], [box_preds], [cls_targets],
                                                      [box_targets])
        with mx.autograd.pause():
            self.metrics[0].update(0, cls_loss[0] * data.shape[0])
            self.metrics[1].update(0, box_loss[0] * data.shape[0])
        return sum_loss[0] * data.shape[0]

    def _faster_rcnn(self, net, shard):
        # GluonCV 0.10's ForwardBackwardTask.forward_backward, returning the per-image loss
        # instead of differentiating its sum.
        import mxnet as mx

        data, label, rpn_cls_targets, rpn_box_targets, rpn_box_masks = shard
        gt_label, gt_box = label[:, :, 4:5], label[:, :, :4]
        (cls_pred, box_pred, _, _, _, rpn_score, rpn_box, _, cls_targets, box_targets, box_masks,
         _) = net(data, gt_box, gt_label)
        rpn_score = rpn_score.squeeze(axis=-1)
        num_rpn_pos = (rpn_cls_targets >= 0).sum()
        rpn_loss1 = self._rpn_cls(rpn_score, rpn_cls_targets, rpn_cls_targets >= 0) * \
            rpn_cls_targets.size / num_rpn_pos
        rpn_loss2 = self._rpn_box(rpn_box, rpn_box_targets, rpn_box_masks) * \
            rpn_box.size / num_rpn_pos
        num_rcnn_pos = (cls_targets >= 0).sum()
        rcnn_loss1 = self._rcnn_cls(cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0) * \
            cls_targets.size / num_rcnn_pos
        rcnn_loss2 = self._rcnn_box(box_pred, box_targets, box_masks) * \
            box_pred.size / num_rcnn_pos
        with mx.autograd.pause():
            for metric, part in zip(self.metrics, (rpn_loss1, rpn_loss2, rcnn_loss1, rcnn_loss2)):
                metric.update(0, part.mean() * self.mix_ratio)
            for metric, (labels, preds) in zip(self.extra_metrics, (
                    ([rpn_cls_targets, rpn_cls_targets >= 0], [rpn_score]),
                    ([rpn_box_targets, rpn_box_masks], [rpn_box]),
                    ([cls_targets], [cls_pred]), ([box_targets, box_masks], [box_pred]))):
                metric.update(labels, preds)
        return (rpn_loss1 + rpn_loss2 + rcnn_loss1 + rcnn_loss2) * self.mix_ratio


def interval_due(epoch, interval, count_from_one):
    """Whether GluonCV's scripts validate or save after ``epoch`` at ``interval``: SSD's and
    YOLOv3's at ``epoch % interval == 0``, Faster R-CNN's (``count_from_one``) at
    ``(epoch + 1) % interval == 0``; an interval of 0 never."""
    return bool(interval) and (epoch + count_from_one) % interval == 0


class GluonCVDetectionOutputs:
    """GluonCV's detection files, written by rank 0: ``PREFIX_best.params`` and a line in
    ``PREFIX_best_map.log`` whenever the validation mAP is the best so far, and
    ``PREFIX_EEEE_MAP.params`` every ``--save-interval`` epochs (epoch numbers from 0 in the
    names; which epochs save is :func:`interval_due`'s). Without validation in an epoch
    (``--val-interval``) its mAP counts as 0."""

    def __init__(self, prefix, save_interval, count_from_one=False):
        self.prefix, self.save_interval = prefix, save_interval
        self.count_from_one = count_from_one
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
        if interval_due(epoch, self.save_interval, self.count_from_one):
            os.makedirs(directory, exist_ok=True)
            net.save_parameters("%s_%04d_%.4f.params" % (self.prefix, epoch, current_map))
