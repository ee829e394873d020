"""Elastic semantic segmentation with GluonCV's FCN and DeepLabV3 on Pascal VOC or ADE20K.

Data, ``--dataset voc``: ``--data-dir`` holds ``VOC2012`` (``JPEGImages``, ``SegmentationClass``
PNG masks with 255 = void, ``ImageSets/Segmentation/{trainval,val}.txt``); ``--dataset ade20k``:
``--data-dir`` holds ``ADEChallengeData2016/{images,annotations}/{training,validation}``.
``--synthetic`` trains on generated images and masks (throughput runs). Metrics: pixel accuracy and
mean IoU (``gluoncv.utils.metrics.SegmentationMetric``) on the center-cropped validation images.

One process::

    python scripts/segmentation/train_segmentation.py --model fcn_resnet50_voc --data-dir ~/VOCdevkit

A KVStore group of 2 workers on this machine::

    python -m gluon_elastic.launch -n 2 -s 1 -- \\
        python scripts/segmentation/train_segmentation.py --backend dist_sync --data-dir ~/VOCdevkit

Horovod, elastic::

    horovodrun --gloo --min-np 8 --max-np 128 --host-discovery-script ./discover.sh \\
        python scripts/segmentation/train_segmentation.py --backend horovod --data-dir ~/VOCdevkit

Emulated 8 -> 128 -> 16 workers in one process::

    python scripts/segmentation/train_segmentation.py --data-dir ~/VOCdevkit --epochs 50 \\
        --emulate-schedule 0:8,16:128,33:16
"""
import argparse
import os
import re

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_elastic import flags, gluoncv_flags, recipe
from gluon_elastic.devices import split_and_load, sync_batch_norm
from gluon_elastic.progress import progress

_SEGMENTATION_NAME = re.compile(r"^(fcn|deeplab)_resnet\d+_(voc|ade)$")
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
DATASET_OF_SUFFIX = {"voc": "voc", "ade": "ade20k"}


def model_names():
    """FCN and DeepLabV3 (ResNet backbones) of the GluonCV model zoo that this recipe trains."""
    from gluoncv import model_zoo

    return [name for name in model_zoo.get_model_list() if _SEGMENTATION_NAME.match(name)]


# --------------------------------------------------------------------------------- arguments
def build_parser():
    """The recipe's argument parser (elastic flags from :func:`gluon_elastic.flags.add_elastic_args`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None, choices=("voc", "ade20k"),
                        help="default: the one the model name ends with")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding VOC2012 (voc) or ADEChallengeData2016 (ade20k)")
    parser.add_argument("--synthetic", action="store_true",
                        help="generated images and masks instead of --data-dir")
    parser.add_argument("--synthetic-samples", type=flags.positive_int, default=512)
    parser.add_argument("--model", default="fcn_resnet50_voc",
                        help="an FCN or DeepLabV3 model of the GluonCV model zoo")
    parser.add_argument("--base-size", type=flags.positive_int, default=520, help="base of random rescaling")
    parser.add_argument("--crop-size", type=flags.positive_int, default=480, help="training and validation crop")
    parser.add_argument("--no-aux", dest="aux", action="store_false",
                        help="no auxiliary FCN head on stage 3")
    parser.add_argument("--aux-weight", type=float, default=0.5)
    parser.add_argument("--epochs", type=flags.positive_int, default=50)
    parser.add_argument("--momentum", type=gluoncv_flags.unit_interval, default=0.9,
                        help="SGD momentum, in [0, 1) (default: %(default)s)")
    parser.add_argument("--wd", type=flags.non_negative_float, default=1e-4,
                        help="weight decay, >= 0 (default: %(default)s)")
    recipe.add_run_args(parser, log_interval=20)
    recipe.add_schedule_args(parser, lr_mode="poly", warmup_epochs=0.0)
    flags.add_elastic_args(parser, local_batch_size=4, lr=0.001)
    return parser


def _layout_files(args):
    if args.dataset == "voc":
        root = os.path.join(args.data_dir, "VOC2012")
        return [os.path.join(root, "ImageSets", "Segmentation", name)
                for name in ("trainval.txt", "val.txt")] + \
               [os.path.join(root, name) for name in ("JPEGImages", "SegmentationClass")]
    root = os.path.join(args.data_dir, "ADEChallengeData2016")
    return [os.path.join(root, kind, split) for kind in ("images", "annotations")
            for split in ("training", "validation")]


def parse_args(argv=None):
    """Parse and validate everything that can be checked before the data is opened."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model not in model_names():
        parser.error("--model %r is not an FCN or DeepLabV3 model of the GluonCV model zoo; "
                     "valid: %s" % (args.model, ", ".join(model_names())))
    model_dataset = DATASET_OF_SUFFIX[args.model.rsplit("_", 1)[1]]
    args.dataset = args.dataset or model_dataset
    if args.dataset != model_dataset:
        parser.error("--model %s predicts the %s classes; it cannot train on --dataset %s"
                     % (args.model, model_dataset, args.dataset))
    if args.crop_size % 8:
        parser.error("--crop-size must be a multiple of 8 (the backbone's output stride), got %d"
                     % args.crop_size)
    _check_data_dir(parser, args)
    args.parser = parser
    return args


# ------------------------------------------------------------------------------------- data
def _image_transform():
    return gluon.data.vision.transforms.Compose([
        gluon.data.vision.transforms.ToTensor(),
        gluon.data.vision.transforms.Normalize(MEAN_RGB, STD_RGB)])


class SyntheticSegmentation(gluon.data.Dataset):
    """Random images and masks of ``crop_size`` (already cropped), a pure function of the index."""

    def __init__(self, num_samples, size, num_class, seed=0):
        self._num_samples, self._size, self.num_class, self._seed = num_samples, size, num_class, seed
        self._transform = _image_transform()

    def __len__(self):
        return self._num_samples

    def __getitem__(self, index):
        rng = np.random.RandomState((self._seed * 1000003 + index) % (2 ** 32))
        image = mx.nd.array(rng.randint(0, 256, size=(self._size, self._size, 3)), dtype=np.uint8)
        mask = rng.randint(0, self.num_class, size=(self._size, self._size)).astype(np.int32)
        return self._transform(image), mx.nd.array(mask, dtype=np.int32)


def num_classes(args):
    from gluoncv.data import ADE20KSegmentation, VOCSegmentation

    return (VOCSegmentation if args.dataset == "voc" else ADE20KSegmentation).NUM_CLASS


def load_data(args):
    """``(train_set, val_set)`` of ``(CHW float image, HW int32 mask)``, -1 = ignored pixel."""
    from gluoncv.data import ADE20KSegmentation, VOCSegmentation

    if args.synthetic:
        return (SyntheticSegmentation(args.synthetic_samples, args.crop_size, num_classes(args),
                                      args.seed),
                SyntheticSegmentation(max(1, args.synthetic_samples // 10), args.crop_size,
                                      num_classes(args), args.seed + 1))
    dataset = VOCSegmentation if args.dataset == "voc" else ADE20KSegmentation
    kwargs = {"root": args.data_dir, "transform": _image_transform(), "base_size": args.base_size,
              "crop_size": args.crop_size}
    return (dataset(split=getattr(args, "train_split", "train"), mode="train", **kwargs),
            dataset(split="val", mode="val", **kwargs))


def make_train_loader(args, train_set):
    """``make_loader(batch_indices, epoch)`` for :class:`gluon_elastic.recipe.ElasticLoop`."""
    def make_loader(batch_indices, epoch):
        return gluon.data.DataLoader(train_set, batch_sampler=batch_indices,
                                     num_workers=args.num_data_workers)
    return make_loader


# ------------------------------------------------------------------------------------ model
def _norm_layer(args, contexts):
    """GluonCV's ``--syncbn``: BatchNorm synchronised over the process's devices (any number)."""
    return sync_batch_norm(len(contexts)) if getattr(args, "syncbn", False) else {}


def build_model(args, contexts):
    """The FCN or DeepLabV3, initialised on every device of ``contexts`` with its shapes
    resolved, hybridized."""
    from gluoncv import model_zoo

    net = model_zoo.get_model(args.model, pretrained=False, pretrained_base=False, aux=args.aux,
                              base_size=args.base_size, crop_size=args.crop_size,
                              **_norm_layer(args, contexts))
    net.initialize(ctx=contexts)
    net.hybridize()
    # One forward resolves the deferred shapes; GluonCV initialises the heads on the CPU in the
    # constructor, so every parameter is then placed on the process's devices.
    net.evaluate(mx.nd.zeros((1, 3, args.crop_size, args.crop_size), ctx=contexts[0]))
    net.collect_params().reset_ctx(contexts)
    return net


def make_loss_fn(args):
    """``loss_fn(net, (image, mask))``: per-image softmax cross-entropy (with the aux head), on
    one device's part of a worker's batch (already on that device)."""
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss

    loss = MixSoftmaxCrossEntropyLoss(aux=args.aux, aux_weight=args.aux_weight)

    def loss_fn(net, shard):
        data, mask = shard
        outputs = net(data)
        return loss(*outputs, mask)
    return loss_fn


# ------------------------------------------------------------------------------- evaluation
def make_evaluate_fn(args, val_set, contexts, batch_size=None):
    """``evaluate(net, indices)`` -> ``(correct, labeled, intersection, union)`` pixel counts,
    each batch split over the devices of ``contexts``."""
    from gluoncv.utils.metrics import SegmentationMetric

    batch_size = batch_size or args.local_batch_size
    nclass = num_classes(args)

    def evaluate(net, indices):
        metric = SegmentationMetric(nclass)
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        loader = gluon.data.DataLoader(val_set, batch_sampler=chunks,
                                       num_workers=args.num_data_workers)
        for batch in progress(loader, total=len(chunks), desc="validation"):
            for data, mask in split_and_load(batch, contexts):
                metric.update(mask, net.evaluate(data))
        return (int(metric.total_correct), int(metric.total_label),
                np.asarray(metric.total_inter, dtype=np.int64).reshape(-1),
                np.asarray(metric.total_union, dtype=np.int64).reshape(-1))
    return evaluate


def make_reduce_fn(args):
    """Pixel accuracy and mIoU from every rank's pixel counts (as SegmentationMetric computes them)."""
    from gluoncv.utils.metrics import SegmentationMetric

    nclass = num_classes(args)

    def reduce(statistics):
        metric = SegmentationMetric(nclass)
        metric.total_correct = sum(s[0] for s in statistics)
        metric.total_label = sum(s[1] for s in statistics)
        metric.total_inter = sum((s[2] for s in statistics), np.zeros(nclass, dtype=np.int64))
        metric.total_union = sum((s[3] for s in statistics), np.zeros(nclass, dtype=np.int64))
        pixel_accuracy, mean_iou = metric.get()
        return {"pixAcc": float(pixel_accuracy), "mIoU": float(mean_iou)}
    return reduce


# ------------------------------------------------------------------------------------ train
def train(args):
    """Build everything from parsed ``args`` and train; returns the :class:`ElasticLoop`."""
    train_set, val_set = load_data(args)
    backend, contexts = recipe.prepare(args.parser, args, len(train_set))
    net = build_model(args, contexts)
    optimizer_params = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd}
    return recipe.fit(args, backend, contexts, net, "sgd", optimizer_params,
                      recipe.build_schedule(args.parser, args, len(train_set)), len(train_set),
                      make_train_loader(args, train_set), make_loss_fn(args),
                      make_evaluate_fn(args, val_set, contexts), make_reduce_fn(args),
                      len(val_set), args.model)


# ------------------------------------------------------------------- GluonCV's command line
def parse_gluoncv_args(argv=None):
    """Parse GluonCV 0.10's ``segmentation/train.py`` command line into this recipe's arguments;
    exit 2 on bad input, before anything is written."""
    from gluon_elastic import gluoncv_segmentation

    parser = build_parser()
    parser.description = "Elastic semantic segmentation with GluonCV 0.10's train.py flags."
    parser._option_string_actions["--dataset"].choices = None  # GluonCV's names, checked below
    gluoncv_segmentation.add_gluoncv_args(parser)
    args = parser.parse_args(argv)
    args.parser = parser
    gluoncv_segmentation.resolve_args(parser, args, mx.context.num_gpus())
    _check_data_dir(parser, args)
    return args


def _check_data_dir(parser, args):
    """Default ``--data-dir`` to GluonCV's folder of the data set; exit 2 unless it holds the
    data set's layout (or ``--synthetic``)."""
    if args.data_dir is None:
        args.data_dir = os.path.expanduser("~/.mxnet/datasets/" +
                                           ("voc" if args.dataset == "voc" else "ade"))
    if not args.synthetic:
        if not os.path.isdir(args.data_dir):
            parser.error("--data-dir %s does not exist (or pass --synthetic)" % args.data_dir)
        missing = [path for path in _layout_files(args) if not os.path.exists(path)]
        if missing:
            parser.error("--data-dir %s is not a %s layout: missing %s"
                         % (args.data_dir, args.dataset, ", ".join(missing)))


def build_gluoncv_model(args, contexts):
    """GluonCV's ``get_segmentation_model`` for ``--model``/``--backbone``/``--dataset``
    (backbone from scratch), initialised on every device of ``contexts`` or loaded from
    ``--resume``, shapes resolved."""
    from gluoncv.model_zoo.segbase import get_segmentation_model

    net = get_segmentation_model(model=args.model, dataset=args.gluoncv_dataset,
                                 backbone=args.backbone, pretrained_base=False, aux=args.aux,
                                 base_size=args.base_size, crop_size=args.crop_size,
                                 **_norm_layer(args, contexts))
    net.initialize(ctx=contexts)
    if args.mode == "hybrid":
        net.hybridize()
    net.evaluate(mx.nd.zeros((1, 3, args.crop_size, args.crop_size), ctx=contexts[0]))
    net.collect_params().reset_ctx(contexts)   # the heads were initialised on the CPU
    if args.dtype != "float32":
        net.cast(args.dtype)
    if args.resume:
        try:
            net.load_parameters(args.resume, ctx=contexts)
        except (AssertionError, mx.base.MXNetError, ValueError) as err:
            args.parser.error("--resume %s does not fit %s: %s"
                              % (args.resume, args.model_name, str(err).splitlines()[0]))
    if args.no_wd:
        for param in net.collect_params(".*beta|.*gamma|.*bias").values():
            param.wd_mult = 0.0
    return net


def train_gluoncv(args):
    """Train (or with ``--eval`` evaluate) from :func:`parse_gluoncv_args`, with GluonCV's log
    lines and ``--save-dir`` files (``epoch_EEEE_mIoU_M.params`` after every validation, or
    every epoch with ``--no-val``). Returns the :class:`ElasticLoop`, or the metrics of
    ``--eval``."""
    import logging

    from gluon_elastic.recipe_log import GluonCVSegmentationLog

    train_set, val_set = load_data(args)
    num_train_samples = len(train_set)
    backend, contexts = recipe.prepare(args.parser, args, num_train_samples)
    net = build_gluoncv_model(args, contexts)
    schedule = recipe.build_schedule(args.parser, args, num_train_samples)
    # Everything is checked: from here on files are written.
    handler = None
    if backend.rank == 0:
        os.makedirs(args.save_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(args.save_dir, args.logging_file))
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("gluon_elastic").addHandler(handler)
        recipe.logger.info("%s", argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                       if k != "parser"}))
        # GluonCV's script would download ImageNet weights for the backbone; say so once.
        recipe.logger.info("The backbone trains from scratch (GluonCV's script starts it from "
                           "pretrained weights, which need a download)")
    try:
        log_format = GluonCVSegmentationLog(lambda global_batch_size:
                                            num_train_samples // global_batch_size)
        evaluate_all = make_evaluate_fn(args, val_set, contexts,
                                        batch_size=args.test_batch_size)
        reduce_all = make_reduce_fn(args)
        if args.eval:
            recipe.logger.info("Evaluating model: %s", args.resume)
            metrics = reduce_all([evaluate_all(net, np.arange(len(val_set)))])
            log_format.training(args.start_epoch, 0.0, 1, args.local_batch_size)
            recipe.logger.info("%s", log_format.validation(args.start_epoch, metrics))
            return metrics
        recipe.logger.info("Starting Epoch: %d", args.start_epoch)
        recipe.logger.info("Total Epochs: %d", args.epochs)

        def evaluate(net, indices):
            return None if args.no_val else evaluate_all(net, indices)

        def reduce(statistics):
            statistics = [s for s in statistics if s is not None]
            return reduce_all(statistics) if statistics else {}

        def on_epoch_end(epoch, net, trainer, metrics):
            if trainer.rank == 0 and (metrics or args.no_val):
                net.save_parameters(os.path.join(args.save_dir, "epoch_%04d_mIoU_%2.4f.params"
                                                 % (epoch, metrics.get("mIoU", 0.0))))

        def on_start(trainer, sampler, resumed):
            if resumed or not args.start_epoch:
                return None
            # GluonCV saves no trainer state: momentum starts at 0, the schedule and counters
            # at --start_epoch epochs of samples.
            sampler.set_epoch(args.start_epoch)
            trainer.iteration = args.start_epoch * (num_train_samples // trainer.global_batch_size)
            trainer.progress = trainer.schedule_progress = args.start_epoch * num_train_samples
            return "started at epoch %d (iteration %d)" % (args.start_epoch, trainer.iteration)

        optimizer_params = {"learning_rate": args.lr, "wd": args.wd,
                            "multi_precision": args.dtype == "float16"}
        if args.optimizer == "sgd":
            optimizer_params["momentum"] = args.momentum
        return recipe.fit(args, backend, contexts, net, args.optimizer, optimizer_params,
                          schedule, num_train_samples, make_train_loader(args, train_set),
                          make_loss_fn(args), evaluate, reduce, len(val_set),
                          args.model_name, log_format=log_format, on_epoch_end=on_epoch_end,
                          on_start=on_start)
    finally:
        if handler is not None:
            logging.getLogger("gluon_elastic").removeHandler(handler)
            handler.close()


def main(argv=None):
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
