"""Elastic object detection with GluonCV's SSD and YOLOv3 on Pascal VOC or COCO.

Data, ``--dataset voc`` (mAP at IoU 0.5, VOC07 11-point):  ``--data-dir`` is a ``VOCdevkit`` with
``VOC2007``/``VOC2012`` folders (``Annotations``, ``JPEGImages``, ``ImageSets/Main``).
``--dataset coco``: ``--data-dir`` holds ``annotations/instances_<split>.json`` and ``<split>/``
image folders; it is read directly from the JSON and evaluated with area-under-curve AP averaged
over IoU 0.50:0.95 (``map``) and at IoU 0.5 (``map50``) by ``gluoncv.utils.metrics.VOCMApMetric``
(pycocotools is not needed; its 101-point interpolation gives slightly different numbers).
``--synthetic`` trains on generated images with random boxes (throughput runs).

One process::

    python scripts/detection/train_detection.py --model ssd_512_resnet50_v1_voc --data-dir ~/VOCdevkit

A KVStore group of 2 workers on this machine::

    python -m gluon_elastic.launch -n 2 -s 1 -- \\
        python scripts/detection/train_detection.py --backend dist_sync --data-dir ~/VOCdevkit

Horovod, elastic::

    horovodrun --gloo --min-np 8 --max-np 128 --host-discovery-script ./discover.sh \\
        python scripts/detection/train_detection.py --backend horovod --data-dir ~/VOCdevkit

Emulated 8 -> 128 -> 16 workers in one process::

    python scripts/detection/train_detection.py --data-dir ~/VOCdevkit --epochs 240 \\
        --emulate-schedule 0:8,80:128,160:16

GluonCV's own command lines: ``train_ssd.py`` and ``train_yolo3.py`` in this folder take every
flag of GluonCV 0.10's ``scripts/detection/ssd/train_ssd.py`` and ``yolo/train_yolo3.py`` with
GluonCV's defaults (:mod:`gluon_elastic.gluoncv_detection`) and train through this recipe.

Loss normalisation follows GluonCV's multi-process recipes: SSD's multibox loss is normalised by
each worker's own number of positive anchors, then averaged over the workers; YOLOv3's losses are
per image and averaged over the global batch.
"""
import argparse
import json
import os
import re

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_elastic import flags, gluoncv_flags, recipe
from gluon_elastic.devices import split_and_load, sync_batch_norm
from gluon_elastic.progress import progress

_DETECTOR_NAME = re.compile(r"^(ssd|yolo3)_.*_(voc|coco|custom)$")
_FASTER_RCNN_NAME = re.compile(r"^faster_rcnn_.*_(voc|coco)$")
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def model_names():
    """SSD and YOLOv3 models of the GluonCV model zoo that this recipe trains."""
    from gluoncv import model_zoo

    return [name for name in model_zoo.get_model_list() if _DETECTOR_NAME.match(name)]


def faster_rcnn_names():
    """Faster R-CNN models of the GluonCV model zoo (VOC and COCO) that ``train_faster_rcnn.py``
    trains, and the ``custom-model`` names of each base network."""
    from gluoncv import model_zoo

    from gluon_elastic.gluoncv_detection import FASTER_RCNN_NETWORKS

    zoo = [name for name in model_zoo.get_model_list() if _FASTER_RCNN_NAME.match(name)]
    return zoo + ["custom_faster_rcnn_fpn_%s_%s" % (network, dataset)
                  for network in FASTER_RCNN_NETWORKS for dataset in ("voc", "coco")]


def default_data_shape(model):
    """Input side of ``model``: 300 or 512 for SSD (from its name), 416 for YOLOv3."""
    match = re.match(r"^ssd_(\d+)_", model)
    return int(match.group(1)) if match else 416


# --------------------------------------------------------------------------------- arguments
def build_parser():
    """The recipe's argument parser (elastic flags from :func:`gluon_elastic.flags.add_elastic_args`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc", choices=("voc", "coco"))
    parser.add_argument("--data-dir", default=None,
                        help="VOCdevkit (voc) or COCO root (coco); default ~/.mxnet/datasets/...")
    parser.add_argument("--train-splits", default=None,
                        help="voc: 2007_trainval,2012_trainval (default); coco: train2017")
    parser.add_argument("--val-splits", default=None, help="voc: 2007_test; coco: val2017")
    parser.add_argument("--synthetic", action="store_true",
                        help="generated images with random boxes instead of --data-dir")
    parser.add_argument("--synthetic-samples", type=flags.positive_int, default=1024)
    parser.add_argument("--model", default="ssd_512_resnet50_v1_voc",
                        help="an SSD or YOLOv3 model of the GluonCV model zoo")
    parser.add_argument("--data-shape", type=int, default=None,
                        help="input side in pixels (default: from the model name; 416 for YOLOv3)")
    parser.add_argument("--epochs", type=flags.positive_int, default=240)
    parser.add_argument("--momentum", type=gluoncv_flags.unit_interval, default=0.9,
                        help="SGD momentum, in [0, 1) (default: %(default)s)")
    parser.add_argument("--wd", type=flags.non_negative_float, default=5e-4,
                        help="weight decay, >= 0 (default: %(default)s)")
    recipe.add_run_args(parser, log_interval=20)
    recipe.add_schedule_args(parser, lr_mode="step", warmup_epochs=0.0, lr_decay_epoch="160,200")
    flags.add_elastic_args(parser, local_batch_size=4, lr=0.001)
    return parser


def _split_dirs(args):
    if args.dataset == "voc":
        paths = []
        for split in args.train_splits + args.val_splits:
            year, name = split
            paths.append(os.path.join(args.data_dir, "VOC%d" % year, "ImageSets", "Main",
                                      name + ".txt"))
        return paths
    return [os.path.join(args.data_dir, "annotations", "instances_%s.json" % split)
            for split in args.train_splits + args.val_splits]


def parse_args(argv=None, parser=None, resolve=None, models=None):
    """Parse and validate everything that can be checked before the data is opened.

    ``parser`` (default :func:`build_parser`) and ``resolve(parser, args)``, called right after
    parsing, let GluonCV's command lines (``train_ssd.py``, ``train_yolo3.py``,
    ``train_faster_rcnn.py``) come in; ``models`` are the model names they train (default:
    :func:`model_names`).
    """
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if resolve is not None:
        resolve(parser, args)
    models = model_names() if models is None else models
    if args.model not in models:
        hint = (" (Faster R-CNN: train_faster_rcnn.py)" if args.model.startswith("faster_rcnn")
                else "")
        parser.error("--model %r is not a model this recipe trains%s; valid: %s"
                     % (args.model, hint, ", ".join(models)))
    if args.data_shape is None:
        args.data_shape = default_data_shape(args.model)
    if args.data_shape < 32:
        parser.error("--data-shape must be >= 32, got %d" % args.data_shape)
    if args.data_dir is None:
        args.data_dir = os.path.expanduser("~/.mxnet/datasets/" + args.dataset)
    defaults = {"voc": ("2007_trainval,2012_trainval", "2007_test"),
                "coco": ("train2017", "val2017")}[args.dataset]
    train_splits = args.train_splits or defaults[0]
    val_splits = args.val_splits or defaults[1]
    if args.dataset == "voc":
        try:
            args.train_splits, args.val_splits = (
                [(int(item.split("_", 1)[0]), item.split("_", 1)[1]) for item in text.split(",")]
                for text in (train_splits, val_splits))
        except (ValueError, IndexError):
            parser.error("VOC splits are YEAR_NAME[,YEAR_NAME...], got %r and %r"
                         % (train_splits, val_splits))
    else:
        args.train_splits, args.val_splits = train_splits.split(","), val_splits.split(",")
    if not args.synthetic:
        if not os.path.isdir(args.data_dir):
            parser.error("--data-dir %s does not exist (or pass --synthetic)" % args.data_dir)
        missing = [path for path in _split_dirs(args) if not os.path.isfile(path)]
        if missing:
            parser.error("--data-dir %s is not a %s layout: missing %s"
                         % (args.data_dir, args.dataset.upper(), ", ".join(missing)))
    args.parser = parser
    return args


# ------------------------------------------------------------------------------------- data
class CocoJsonDetection(gluon.data.Dataset):
    """COCO detection read from ``instances_<split>.json``: ``(HWC uint8 image, (N, 5) label)``.

    Labels are ``xmin, ymin, xmax, ymax, class`` with classes in the order of the JSON's
    categories; crowd and degenerate boxes are skipped, and so are images left without boxes when
    ``skip_empty`` (training).
    """

    def __init__(self, root, splits, skip_empty=True):
        self.items = []
        self.classes = None
        for split in splits:
            with open(os.path.join(root, "annotations", "instances_%s.json" % split)) as fin:
                content = json.load(fin)
            categories = sorted(content["categories"], key=lambda c: c["id"])
            classes = tuple(c["name"] for c in categories)
            if self.classes is not None and classes != self.classes:
                raise ValueError("COCO splits %s have different categories" % (splits,))
            self.classes = classes
            category_index = {c["id"]: index for index, c in enumerate(categories)}
            boxes = {}
            for ann in content["annotations"]:
                x, y, width, height = ann["bbox"]
                if ann.get("iscrowd", 0) or width < 1 or height < 1:
                    continue
                boxes.setdefault(ann["image_id"], []).append(
                    [x, y, x + width - 1, y + height - 1, category_index[ann["category_id"]]])
            for image in progress(sorted(content["images"], key=lambda i: i["id"]),
                                  desc="indexing %s" % split):
                label = boxes.get(image["id"], [])
                if not label and skip_empty:
                    continue
                self.items.append((os.path.join(root, split, image["file_name"]),
                                   np.array(label, dtype=np.float32).reshape(-1, 5)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return mx.image.imread(path), label.copy()


class SyntheticDetection(gluon.data.Dataset):
    """Random images with 1-3 random boxes each, a pure function of the index."""

    classes = tuple("class%d" % index for index in range(20))

    def __init__(self, num_samples, size, seed=0):
        self._num_samples, self._size, self._seed = num_samples, size, seed

    def __len__(self):
        return self._num_samples

    def __getitem__(self, index):
        rng = np.random.RandomState((self._seed * 1000003 + index) % (2 ** 32))
        image = rng.randint(0, 256, size=(self._size, self._size, 3), dtype=np.uint8)
        label = []
        for _ in range(rng.randint(1, 4)):
            x0, y0 = rng.randint(0, self._size // 2, size=2)
            x1, y1 = x0 + rng.randint(8, self._size // 2, size=2)
            label.append([x0, y0, x1, y1, rng.randint(len(self.classes))])
        return mx.nd.array(image, dtype=np.uint8), np.array(label, dtype=np.float32)


def load_data(args):
    """``(train_set, val_set)`` of ``(image, label)`` items; ``train_set.classes`` names classes."""
    from gluoncv.data import VOCDetection

    if args.synthetic:
        return (SyntheticDetection(args.synthetic_samples, args.data_shape, args.seed),
                SyntheticDetection(max(1, args.synthetic_samples // 10), args.data_shape,
                                   args.seed + 1))
    if args.dataset == "voc":
        return (VOCDetection(root=args.data_dir, splits=args.train_splits),
                VOCDetection(root=args.data_dir, splits=args.val_splits))
    return (CocoJsonDetection(args.data_dir, args.train_splits),
            CocoJsonDetection(args.data_dir, args.val_splits, skip_empty=False))


def is_yolo(args):
    return args.model.startswith("yolo3")


def make_train_loader(args, train_set, net):
    """``make_loader(batch_indices, epoch)`` with GluonCV's SSD or YOLOv3 training transform."""
    from gluoncv.data.batchify import Pad, Stack, Tuple
    from gluoncv.data.transforms import presets

    size = args.data_shape
    if is_yolo(args):
        transform = presets.yolo.YOLO3DefaultTrainTransform(size, size, net, mean=MEAN_RGB,
                                                            std=STD_RGB)
        batchify = Tuple(*([Stack() for _ in range(6)] + [Pad(axis=0, pad_val=-1)]))
    else:
        # The anchors come out of a training-mode pass, on the model's first device.
        first_device = next(iter(net.collect_params().values())).list_ctx()[0]
        with autograd.train_mode():
            _, _, anchors = net(mx.nd.zeros((1, 3, size, size), ctx=first_device))
        transform = presets.ssd.SSDDefaultTrainTransform(size, size, anchors.copyto(mx.cpu()),
                                                         mean=MEAN_RGB, std=STD_RGB)
        batchify = Tuple(Stack(), Stack(), Stack())
    dataset = train_set.transform(transform)

    def make_loader(batch_indices, epoch):
        return gluon.data.DataLoader(dataset, batch_sampler=batch_indices, batchify_fn=batchify,
                                     num_workers=args.num_data_workers)
    return make_loader


# ------------------------------------------------------------------------------------ model
def build_model(args, classes, contexts):
    """The detector for ``classes``, initialised on every device of ``contexts`` with its shapes
    resolved (not yet hybridized: the training transforms run it imperatively to find anchors
    and feature maps)."""
    from gluoncv import model_zoo

    # GluonCV's --syncbn: BatchNorm synchronised over the process's devices when it has several.
    sync = sync_batch_norm(len(contexts)) if getattr(args, "syncbn", False) and \
        len(contexts) > 1 else {}
    net = model_zoo.get_model(args.model, pretrained=False, pretrained_base=False, **sync)
    net.initialize(ctx=contexts)
    if tuple(net.classes) != tuple(classes):
        # reset_class rebuilds the class predictors on the contexts of the initialised old ones.
        net.reset_class(list(classes))
        net.collect_params().initialize(ctx=contexts)
    # Inference mode resolves the shapes of both detectors (YOLOv3's training mode needs targets).
    net(mx.nd.zeros((1, 3, args.data_shape, args.data_shape), ctx=contexts[0]))
    return net


def make_loss_fn(args):
    """``loss_fn(net, shard)``: per-image detection loss of one device's part of a worker's
    batch (already on that device)."""
    from gluoncv import loss as gcv_loss

    if is_yolo(args):
        def yolo_loss(net, shard):
            data, targets, gt_boxes = shard[0], shard[1:6], shard[6]
            obj, center, scale, cls = net(data, gt_boxes, *targets)
            return obj + center + scale + cls
        return yolo_loss

    multibox = gcv_loss.SSDMultiBoxLoss()

    def ssd_loss(net, shard):
        data, cls_targets, box_targets = shard
        cls_preds, box_preds, _ = net(data)
        # Normalised by this device's positive anchors (GluonCV), times its batch so that the
        # trainer's division by the global batch averages over devices and workers.
        sum_loss, _, _ = multibox([cls_preds], [box_preds], [cls_targets], [box_targets])
        return sum_loss[0] * data.shape[0]
    return ssd_loss


# ------------------------------------------------------------------------------- evaluation
def make_evaluate_fn(args, val_set, contexts, batch_size=None):
    """``evaluate(net, indices)`` -> per-batch numpy predictions and ground truth of those images,
    each batch split over the devices of ``contexts``."""
    from gluoncv.data.batchify import Pad, Stack, Tuple
    from gluoncv.data.transforms import presets

    size = args.data_shape
    transform = (presets.yolo.YOLO3DefaultValTransform(size, size, mean=MEAN_RGB, std=STD_RGB)
                 if is_yolo(args) else
                 presets.ssd.SSDDefaultValTransform(size, size, mean=MEAN_RGB, std=STD_RGB))
    dataset = val_set.transform(transform)
    batchify = Tuple(Stack(), Pad(pad_val=-1))
    batch_size = batch_size or args.local_batch_size

    def evaluate(net, indices):
        net.set_nms(nms_thresh=0.45, nms_topk=400)
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        loader = gluon.data.DataLoader(dataset, batch_sampler=chunks, batchify_fn=batchify,
                                       num_workers=args.num_data_workers)
        records = []
        for batch in progress(loader, total=len(chunks), desc="validation"):
            for data, label in split_and_load(batch, contexts):
                ids, scores, bboxes = net(data)
                label = label.asnumpy()
                difficult = label[:, :, 5:6] if label.shape[-1] > 5 else None
                records.append((bboxes.asnumpy(), ids.asnumpy(), scores.asnumpy(),
                                label[:, :, :4], label[:, :, 4:5], difficult))
        # set_nms cleared the cached graph and inference cached one with the image as only input;
        # YOLOv3 trains with seven inputs, so training must build its graph afresh.
        net.hybridize()
        return records
    return evaluate


def make_reduce_fn(args, classes):
    """mAP from every rank's records: VOC07 at IoU 0.5 (voc), mean over IoU 0.50:0.95 (coco)."""
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric, VOCMApMetric

    def reduce(statistics):
        records = [record for rank_records in statistics for record in rank_records]
        if args.dataset == "voc" and not args.synthetic:
            metrics = [VOC07MApMetric(iou_thresh=0.5, class_names=classes)]
        else:
            metrics = [VOCMApMetric(iou_thresh=t, class_names=classes)
                       for t in np.arange(0.5, 0.951, 0.05)]
        for metric in metrics:
            for bboxes, ids, scores, gt_bboxes, gt_ids, gt_difficult in records:
                metric.update(bboxes, ids, scores, gt_bboxes, gt_ids, gt_difficult)
        values = [float(np.nan_to_num(metric.get()[1][-1])) for metric in metrics]
        if len(values) == 1:
            return {"mAP": values[0]}
        return {"map": float(np.mean(values)), "map50": values[0]}
    return reduce


# ------------------------------------------------------------------------------------ train
def train(args):
    """Build everything from parsed ``args`` and train; returns the :class:`ElasticLoop`."""
    train_set, val_set = load_data(args)
    backend, contexts = recipe.prepare(args.parser, args, len(train_set))
    classes = tuple(train_set.classes)
    net = build_model(args, classes, contexts)
    make_loader = make_train_loader(args, train_set, net)
    net.hybridize()
    optimizer_params = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd}
    return recipe.fit(args, backend, contexts, net, "sgd", optimizer_params,
                      recipe.build_schedule(args.parser, args, len(train_set)), len(train_set),
                      make_loader, make_loss_fn(args),
                      make_evaluate_fn(args, val_set, contexts), make_reduce_fn(args, classes),
                      len(val_set), args.model)


# ------------------------------------------------------------------- GluonCV's command lines
def parse_gluoncv_args(kind, argv=None):
    """Parse GluonCV's ``train_ssd.py`` (``kind='ssd'``), ``train_yolo3.py`` (``'yolo3'``) or
    ``train_faster_rcnn.py`` (``'faster_rcnn'``) command line into this recipe's arguments; exit 2
    on bad input, before anything is written."""
    from gluon_elastic import gluoncv_detection

    parser = build_parser()
    parser.description = "Elastic %s with GluonCV 0.10's train_%s.py flags." % (
        {"ssd": "SSD", "yolo3": "YOLOv3", "faster_rcnn": "Faster R-CNN"}[kind], kind)
    gluoncv_detection.add_gluoncv_args(parser, kind)
    models = faster_rcnn_names() if kind == "faster_rcnn" else model_names()
    zoo = [name for name in models if name.startswith(kind + "_")]
    args = parse_args(argv, parser, lambda p, a: gluoncv_detection.resolve_args(
        p, a, kind, zoo, mx.context.num_gpus()), models=models)
    args.gluoncv = kind
    return args


def _faster_rcnn_loader(args, train_set, net, loss_fn):
    """GluonCV's Faster R-CNN training data: ``FasterRCNNDefaultTrainTransform`` (resize by the
    model's short side, flip, RPN targets from the model's anchors) and its batchify (images and
    RPN targets padded to the largest image of the step), mixup of image pairs with ``--mixup``
    but in the last ``--no-mixup-epochs`` (the loss then counts half, ``loss_fn.mix_ratio``)."""
    from gluoncv.data.mixup.detection import MixupDetection
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform

    from gluon_elastic import gluoncv_detection

    dataset = MixupDetection(train_set) if args.mixup else train_set
    transform = FasterRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                                multi_stage=args.use_fpn)
    batchify = gluoncv_detection.FasterRCNNBatchify(net)

    def make_loader(batch_indices, epoch):
        if args.mixup:
            late = epoch >= args.epochs - args.no_mixup_epochs
            dataset.set_mixup(None if late else np.random.uniform, *(() if late else (0.5, 0.5)))
            loss_fn.mix_ratio = 1.0 if late else 0.5
        return gluon.data.DataLoader(dataset.transform(transform), batch_sampler=batch_indices,
                                     batchify_fn=batchify, num_workers=args.num_data_workers)
    return make_loader


def make_faster_rcnn_evaluate_fn(args, val_set, contexts, net):
    """``evaluate(net, indices)`` for Faster R-CNN as GluonCV validates it: one image at a time
    (the devices of ``contexts`` in turn) through ``FasterRCNNDefaultValTransform``, detections clipped to the image, detections and
    ground truth scaled back to the original resolution."""
    from gluoncv.data.batchify import Append, Tuple
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultValTransform
    from gluoncv.nn.bbox import BBoxClipToImage

    short = net.short[-1] if isinstance(net.short, (tuple, list)) else net.short
    dataset = val_set.transform(FasterRCNNDefaultValTransform(short, net.max_size))
    clipper = BBoxClipToImage()

    def evaluate(net, indices):
        if not args.disable_hybridization:
            # Inference takes one input where training takes three: a graph of its own.
            net.hybridize(static_alloc=args.static_alloc)
        loader = gluon.data.DataLoader(dataset, batch_sampler=[[int(i)] for i in indices],
                                       batchify_fn=Tuple(Append(), Append(), Append()),
                                       num_workers=args.num_data_workers)
        records = []
        for number, ((image,), (label,), (scale,)) in enumerate(
                progress(loader, total=len(indices), desc="validation")):
            image = image.as_in_context(contexts[number % len(contexts)])
            ids, scores, bboxes = net(image)
            scale = float(scale.reshape((-1,)).asscalar())
            bboxes = clipper(bboxes, image) * scale
            label = label.asnumpy()
            difficult = label[:, :, 5:6] if label.shape[-1] > 5 else None
            records.append((bboxes.asnumpy(), ids.asnumpy(), scores.asnumpy(),
                            label[:, :, :4] * scale, label[:, :, 4:5], difficult))
        if not args.disable_hybridization:
            net.hybridize(static_alloc=args.static_alloc)
        return records
    return evaluate


def _yolo_loader(args, train_set, net):
    """GluonCV's YOLOv3 training data: random input sides (320 to 608 every 10 batches) unless
    ``--no-random-shape``, and mixup of image pairs (``--mixup``) but in the last
    ``--no-mixup-epochs``."""
    from gluoncv.data import RandomTransformDataLoader
    from gluoncv.data.batchify import Pad, Stack, Tuple
    from gluoncv.data.mixup.detection import MixupDetection
    from gluoncv.data.transforms import presets

    dataset = MixupDetection(train_set) if args.mixup else train_set
    sides = [args.data_shape] if args.no_random_shape else [x * 32 for x in range(10, 20)]
    transforms = [presets.yolo.YOLO3DefaultTrainTransform(side, side, net, mixup=args.mixup,
                                                          mean=MEAN_RGB, std=STD_RGB)
                  for side in sides]
    batchify = Tuple(*([Stack() for _ in range(6)] + [Pad(axis=0, pad_val=-1)]))

    def make_loader(batch_indices, epoch):
        if args.mixup:
            late = epoch >= args.epochs - args.no_mixup_epochs
            dataset.set_mixup(None if late else np.random.beta, *(() if late else (1.5, 1.5)))
        if len(transforms) == 1:
            return gluon.data.DataLoader(dataset.transform(transforms[0]),
                                         batch_sampler=batch_indices, batchify_fn=batchify,
                                         num_workers=args.num_data_workers)
        return RandomTransformDataLoader(transforms, dataset, interval=10,
                                         batch_sampler=list(batch_indices), batchify_fn=batchify,
                                         num_workers=args.num_data_workers)
    return make_loader


def gluoncv_entry(kind):
    """``(parse_args, train, main)`` of GluonCV's command line for ``kind``: the functions of the
    entry scripts ``train_ssd.py``, ``train_yolo3.py`` and ``train_faster_rcnn.py``."""
    def parse_args(argv=None):
        """GluonCV's flags into the recipe's arguments; exit 2 on bad input."""
        return parse_gluoncv_args(kind, argv)

    def main(argv=None):
        """Command-line entry point."""
        train_gluoncv(parse_args(argv))

    return parse_args, train_gluoncv, main


def train_gluoncv(args):
    """Train from :func:`parse_gluoncv_args`: GluonCV's losses in its log lines, its validation
    interval, its ``--save-prefix`` files and ``--resume``/``--start-epoch``; Faster R-CNN with
    only GluonCV's trainable parameters (``collect_train_params``) taking gradients."""
    import logging

    from gluon_elastic import gluoncv_detection
    from gluon_elastic.recipe_log import GluonCVDetectionLog

    kind = args.gluoncv
    train_set, val_set = load_data(args)
    num_train_samples = len(train_set)
    # YOLOv3's --num-samples sets the epoch length of the LR schedule, as in GluonCV.
    schedule_samples = (args.num_samples if kind == "yolo3" and args.num_samples > 0
                        else num_train_samples)
    backend, contexts = recipe.prepare(args.parser, args, num_train_samples)
    classes = tuple(train_set.classes)
    if kind == "faster_rcnn":
        net = gluoncv_detection.build_faster_rcnn(args, classes, contexts)
        # GluonCV's --lr-warmup counts iterations of epoch 0: samples of the starting world.
        args.warmup_epochs = (max(args.lr_warmup, 0) * args.local_batch_size * backend.world_size
                              / num_train_samples)
    else:
        net = build_model(args, classes, contexts)
    if args.resume:
        try:
            net.load_parameters(args.resume.strip(), ctx=contexts)
        except (AssertionError, mx.base.MXNetError, ValueError) as err:
            args.parser.error("--resume %s does not fit %s: %s"
                              % (args.resume, args.model, str(err).splitlines()[0]))
    if kind == "yolo3":
        if args.no_wd:
            for param in net.collect_params(".*beta|.*gamma|.*bias").values():
                param.wd_mult = 0.0
        if args.label_smooth:
            net._target_generator._label_smooth = True  # pylint: disable=protected-access
        make_loader = _yolo_loader(args, train_set, net)
    elif kind == "ssd":
        make_loader = make_train_loader(args, train_set, net)
    rho = ({"rpn_smoothl1_rho": args.rpn_smoothl1_rho, "rcnn_smoothl1_rho": args.rcnn_smoothl1_rho}
           if kind == "faster_rcnn" else {})
    loss_fn = gluoncv_detection.DetectionLoss(kind, **rho)
    if kind == "faster_rcnn":
        make_loader = _faster_rcnn_loader(args, train_set, net, loss_fn)
        evaluate_all = make_faster_rcnn_evaluate_fn(args, val_set, contexts, net)
        if not args.disable_hybridization:
            net.hybridize(static_alloc=args.static_alloc)
    else:
        evaluate_all = make_evaluate_fn(args, val_set, contexts)
        net.hybridize()
    schedule = recipe.build_schedule(args.parser, args, schedule_samples)
    # Everything is checked: from here on files are written.
    handler = None
    if backend.rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_prefix)), exist_ok=True)
        handler = logging.FileHandler(args.save_prefix + "_train.log")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("gluon_elastic").addHandler(handler)
        recipe.logger.info("%s", argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                       if k != "parser"}))
        # GluonCV's script would download ImageNet weights for the base network; say so once.
        recipe.logger.info("The base network trains from scratch (GluonCV's script starts it "
                           "from pretrained weights, which need a download)")
        if getattr(args, "verbose", False):
            recipe.logger.info("Trainable parameters:")
            recipe.logger.info("%s", net.collect_train_params().keys())
        recipe.logger.info("Start training from [Epoch %d]", args.start_epoch)
    try:
        current = {"epoch": 0}
        # Faster R-CNN's script counts its validation and saving intervals from epoch 1.
        from_one = kind == "faster_rcnn"

        def loader(batch_indices, epoch):
            current["epoch"] = epoch
            return make_loader(batch_indices, epoch)

        def evaluate(net, indices):
            # GluonCV validates every --val-interval epochs, SSD and YOLOv3 also at every saving
            # epoch.
            epoch = current["epoch"]
            if not (gluoncv_detection.interval_due(epoch, args.val_interval, from_one) or
                    not from_one and gluoncv_detection.interval_due(epoch, args.save_interval,
                                                                    from_one)):
                return None
            return evaluate_all(net, indices)

        reduce_all = make_class_reduce_fn(args, classes)

        def reduce(statistics):
            statistics = [s for s in statistics if s is not None]
            return reduce_all(statistics) if statistics else {}

        outputs = gluoncv_detection.GluonCVDetectionOutputs(args.save_prefix, args.save_interval,
                                                            count_from_one=from_one)

        def on_start(trainer, sampler, resumed):
            if resumed or not args.start_epoch:
                return None
            # GluonCV saves no trainer state: momentum starts at 0, the schedule and counters
            # at --start-epoch epochs of samples.
            sampler.set_epoch(args.start_epoch)
            trainer.iteration = args.start_epoch * (num_train_samples // trainer.global_batch_size)
            trainer.progress = trainer.schedule_progress = args.start_epoch * schedule_samples
            return "started at epoch %d (iteration %d)" % (args.start_epoch, trainer.iteration)

        optimizer_params = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd}
        return recipe.fit(args, backend, contexts, net, "sgd", optimizer_params, schedule,
                          num_train_samples, loader, loss_fn, evaluate, reduce,
                          len(val_set), args.model,
                          log_format=GluonCVDetectionLog(
                              loss_fn.metrics, show_lr=kind == "yolo3",
                              extra_metrics=loss_fn.extra_metrics,
                              separator="," if kind == "faster_rcnn" else ", "),
                          on_epoch_end=outputs.on_epoch_end, on_start=on_start)
    finally:
        if handler is not None:
            logging.getLogger("gluon_elastic").removeHandler(handler)
            handler.close()


def make_class_reduce_fn(args, classes):
    """GluonCV's validation values: the AP of every class and ``mAP`` (VOC07 at IoU 0.5, or the
    recipe's ``map``/``map50`` for COCO and synthetic data)."""
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric

    if args.dataset != "voc" or args.synthetic:
        return make_reduce_fn(args, classes)

    def reduce(statistics):
        metric = VOC07MApMetric(iou_thresh=0.5, class_names=classes)
        for rank_records in statistics:
            for bboxes, ids, scores, gt_bboxes, gt_ids, gt_difficult in rank_records:
                metric.update(bboxes, ids, scores, gt_bboxes, gt_ids, gt_difficult)
        names, values = metric.get()
        return {name: float(np.nan_to_num(value)) for name, value in zip(names, values)}
    return reduce


def main(argv=None):
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
