"""GluonCV 0.10's segmentation command line (``scripts/segmentation/train.py``) on top of the
segmentation recipe, ``scripts/segmentation/train_segmentation.py``.

:func:`add_gluoncv_args` adds GluonCV's flags with GluonCV's defaults to the recipe's parser;
:func:`resolve_args` turns them into the recipe's arguments (model from ``--model``,
``--backbone`` and ``--dataset``; device from ``--no-cuda``/``--ngpus``; backend from
``--kvstore``) and ends with exit code 2 on bad input, before anything is written.

The batch size
--------------
GluonCV's segmentation ``--batch-size`` is the batch of one process (split over its GPUs), so it
is the per-worker batch: ``--local-batch-size`` defaults to it, and both given with different
values exit 2. ``--test-batch-size`` is the validation batch of one worker.
"""
import os

from . import devices
from . import flags as _flags
from . import gluoncv_flags

__all__ = ["MODELS", "BACKBONES", "DATASETS", "add_gluoncv_args", "resolve_args"]

MODELS = ("fcn", "psp", "deeplab")
BACKBONES = ("resnet50", "resnet101", "resnet152")
# GluonCV's dataset names -> (the recipe's dataset, the model zoo's acronym).
DATASETS = {"pascal": ("voc", "voc"), "pascal_voc": ("voc", "voc"), "ade20k": ("ade20k", "ade")}


def add_gluoncv_args(parser):
    """Add GluonCV ``train.py``'s flags that the recipe's parser lacks; set GluonCV's defaults."""
    group = parser.add_argument_group("GluonCV segmentation flags")
    group.add_argument("--backbone", default="resnet50", help="backbone (default: %(default)s)")
    group.add_argument("--model-zoo", default=None,
                       help="a model of the zoo by name instead of --model/--backbone/--dataset")
    group.add_argument("--pretrained", action="store_true",
                       help="refused: pretrained weights need a download")
    group.add_argument("--workers", dest="num_data_workers", type=_flags.non_negative_int,
                       help="data loader processes (same as -j)")
    group.add_argument("--train-split", default="train",
                       help="training split (default: %(default)s)")
    group.add_argument("--aux", action="store_true", help="auxiliary FCN head and loss")
    group.add_argument("--start_epoch", type=_flags.non_negative_int, default=0,
                       help="epoch to start from (default: %(default)s)")
    gluoncv_flags.add_batch_size_arg(parser, group, 16, "batch of one process")
    group.add_argument("--test-batch-size", type=_flags.positive_int, default=16,
                       help="validation batch of one process (default: %(default)s)")
    group.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                       help="(default: %(default)s)")
    group.add_argument("--weight-decay", dest="wd", type=_flags.non_negative_float,
                       help="weight decay (same as --wd; default: 0.0001)")
    group.add_argument("--no-wd", action="store_true",
                       help="no weight decay on BatchNorm and bias parameters")
    group.add_argument("--mode", choices=("imperative", "symbolic", "hybrid"), default=None,
                       help="hybrid: hybridize the model")
    group.add_argument("--no-cuda", action="store_true", help="train on the CPU")
    group.add_argument("--ngpus", type=_flags.non_negative_int, default=None,
                       help="GPUs of this process (default: all visible; 0: CPU)")
    group.add_argument("--kvstore", default=None,
                       help="device, local, dist_sync or dist_device_sync: the --backend")
    group.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                       help="float16 needs a GPU (default: %(default)s)")
    group.add_argument("--resume", default=None, help="parameters to start from")
    group.add_argument("--checkname", default="default", help="accepted (unused, as in GluonCV)")
    group.add_argument("--save-dir", default=None,
                       help="default: runs/DATASET/MODEL/BACKBONE/")
    group.add_argument("--logging-file", default="train.log",
                       help="log file inside --save-dir (default: %(default)s)")
    group.add_argument("--eval", action="store_true", help="evaluate --resume only")
    group.add_argument("--no-val", action="store_true", help="no validation during training")
    group.add_argument("--syncbn", action="store_true",
                       help="SyncBatchNorm over the devices of a process (workers normalise "
                            "separately)")
    parser.set_defaults(model="fcn", dataset="pascal", aux=False, epochs=50, lr=0.001,
                        momentum=0.9, wd=0.0001, log_interval=20, warmup_lr=0.0, lr_mode="poly",
                        lr_power=0.9, num_data_workers=16)
    return group


def resolve_args(parser, args, gpu_count):
    """Turn GluonCV's flags into the recipe's arguments; exit 2 on bad input."""
    if args.pretrained:
        gluoncv_flags.refuse_download(parser, "--pretrained", "the model's weights")
    if args.model_zoo is not None:
        parts = args.model_zoo.split("_")
        acronyms = {acronym: name for name, (_, acronym) in DATASETS.items() if name != "pascal"}
        if len(parts) != 3 or parts[2] not in acronyms:
            parser.error("--model-zoo %s: the recipe trains MODEL_BACKBONE_{voc,ade} models"
                         % args.model_zoo)
        # As in GluonCV, --model-zoo names the model and --dataset the data; a model made for
        # other data (its classes) contradicts them.
        zoo_dataset = acronyms[parts[2]]
        if DATASETS.get(args.dataset, (None,))[0] != DATASETS[zoo_dataset][0]:
            parser.error("--model-zoo %s is a model for %s; it contradicts --dataset %s (give "
                         "--dataset %s)" % (args.model_zoo, zoo_dataset, args.dataset,
                                            zoo_dataset))
        args.model, args.backbone = parts[0], parts[1]
    if args.model not in MODELS:
        parser.error("--model %s: the recipe trains %s" % (args.model, ", ".join(MODELS)))
    if args.backbone not in BACKBONES:
        parser.error("--backbone %s: the recipe trains %s" % (args.backbone, ", ".join(BACKBONES)))
    if args.dataset not in DATASETS:
        parser.error("--dataset %s: the recipe reads %s" % (args.dataset, ", ".join(DATASETS)))
    gluoncv_dataset = args.dataset
    args.dataset, acronym = DATASETS[gluoncv_dataset]
    args.gluoncv_dataset = "pascal_voc" if gluoncv_dataset == "pascal" else gluoncv_dataset
    args.model_name = "%s_%s_%s" % (args.model, args.backbone, acronym)
    if args.crop_size % 8:
        parser.error("--crop-size %d: FCN, PSPNet and DeepLabV3 need a multiple of 8"
                     % args.crop_size)
    if args.kvstore is not None:
        if args.backend not in ("device", args.kvstore):
            parser.error("--kvstore %s contradicts --backend %s" % (args.kvstore, args.backend))
        if args.kvstore not in ("device", "local", "dist_sync", "dist_device_sync"):
            parser.error("--kvstore %s: use device, local, dist_sync or dist_device_sync (or "
                         "--backend horovod)" % args.kvstore)
        args.backend = args.kvstore
    gluoncv_flags.resolve_local_batch_size(parser, args, num_devices=1)
    ngpus = gpu_count if args.ngpus is None else args.ngpus
    if args.no_cuda:
        ngpus = 0
    if ngpus > gpu_count:
        parser.error("--ngpus %d: MXNet sees %d GPU(s) (use --no-cuda for the CPU)"
                     % (ngpus, gpu_count))
    if args.device == "auto":
        args.device = "gpu" if ngpus else "cpu"
    if args.device == "gpu" and ngpus:
        # GPUs of each process, placed by the local-rank rule of gluon_elastic.devices (all of
        # the host's by default: GluonCV runs one process per host).
        if args.num_gpus not in (0, ngpus):
            parser.error("--num-gpus %d contradicts --ngpus %d" % (args.num_gpus, ngpus))
        args.num_gpus = ngpus
    if args.syncbn:
        devices.check_sync_batch_norm(parser, "--syncbn", args.local_batch_size,
                                      max(1, args.num_gpus), args.device)
    if args.dtype == "float16" and not ngpus:
        parser.error("--dtype float16 needs a GPU")
    if args.save_dir is None:
        args.save_dir = os.path.join("runs", args.gluoncv_dataset, args.model, args.backbone)
    gluoncv_flags.check_output_paths(
        parser, directories=[("--save-dir", args.save_dir),
                             ("--checkpoint-dir", args.checkpoint_dir)],
        files=[("--logging-file", os.path.join(args.save_dir, args.logging_file)),
               ("--metrics-file", args.metrics_file)])
    if args.resume is not None and not os.path.isfile(args.resume):
        parser.error("--resume %s: no such file" % args.resume)
    if args.eval and args.resume is None:
        parser.error("--eval evaluates --resume: give the parameters file")
    if args.start_epoch >= args.epochs and not args.eval:
        parser.error("--start_epoch %d leaves nothing to train in --epochs %d"
                     % (args.start_epoch, args.epochs))
    return args
