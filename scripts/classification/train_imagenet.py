"""Elastic ImageNet classification with the ResNet family of the GluonCV model zoo.

Data: ``--data-dir`` holds ImageNet in RecordIO (``train.rec``/``train.idx``, ``val.rec``/``val.idx``,
as made by MXNet's ``im2rec``), read by index so that both sets are sharded by the *current* world.
``--synthetic`` trains on generated images instead (throughput runs; no data directory needed).

One process (GPU 0 when there is one)::

    python scripts/classification/train_imagenet.py --data-dir ~/imagenet

A KVStore group of 2 workers on this machine::

    python -m gluon_elastic.launch -n 2 -s 1 -- \\
        python scripts/classification/train_imagenet.py --backend dist_sync --data-dir ~/imagenet

Horovod, elastic between 8 and 128 workers (``discover.sh`` prints ``host:slots`` lines)::

    horovodrun --gloo --network-interface eth0 --min-np 8 --max-np 128 \\
        --host-discovery-script ./discover.sh \\
        python scripts/classification/train_imagenet.py --backend horovod --data-dir ~/imagenet

The paper's 8 -> 128 -> 16 worker schedule, emulated in one process::

    python scripts/classification/train_imagenet.py --data-dir ~/imagenet \\
        --emulate-schedule 0:8,30:128,60:16

Recipe: SGD with momentum, linear warmup then cosine or step decay (a
:class:`gluon_elastic.schedule.Schedule` in samples), label smoothing, no weight decay on BatchNorm
and bias parameters, last-gamma initialisation, float16 with float32 master weights on GPUs,
top-1/top-5 accuracy on the validation set.
"""
import argparse
import os
import re

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_elastic import flags, recipe
from gluon_elastic.progress import progress

_RESNET_NAME = re.compile(r"^resnet\d+_v(1|2|1b|1c|1d|1e|1s)$")
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def model_names():
    """Names of the ResNet family in the GluonCV model zoo that this recipe trains."""
    from gluoncv import model_zoo

    return [name for name in model_zoo.get_model_list() if _RESNET_NAME.match(name)]


# --------------------------------------------------------------------------------- arguments
def build_parser():
    """The recipe's argument parser (elastic flags from :func:`gluon_elastic.flags.add_elastic_args`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.path.expanduser("~/.mxnet/datasets/imagenet/rec"),
                        help="directory with train.rec/.idx and val.rec/.idx")
    parser.add_argument("--synthetic", action="store_true",
                        help="generated images instead of --data-dir (throughput runs)")
    parser.add_argument("--synthetic-samples", type=flags.positive_int, default=12800,
                        help="training images per epoch with --synthetic (default: %(default)s)")
    parser.add_argument("--model", default="resnet50_v1b", help="a ResNet of the GluonCV model zoo")
    parser.add_argument("--classes", type=flags.positive_int, default=1000, help="number of classes")
    parser.add_argument("--input-size", type=flags.positive_int, default=224, help="training crop size")
    parser.add_argument("--crop-ratio", type=float, default=0.875,
                        help="validation: center crop / resized short side")
    parser.add_argument("--epochs", type=flags.positive_int, default=90)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--wd", type=float, default=1e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--no-wd-bn-bias", dest="no_wd", action="store_true", default=True,
                        help="no weight decay on BatchNorm and bias parameters (default)")
    parser.add_argument("--wd-bn-bias", dest="no_wd", action="store_false",
                        help="weight decay on every parameter")
    parser.add_argument("--no-last-gamma", dest="last_gamma", action="store_false",
                        help="initialise the last BatchNorm gamma of each block to 1, not 0")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                        help="float16: mixed precision (needs a GPU)")
    recipe.add_run_args(parser, log_interval=50)
    recipe.add_schedule_args(parser, lr_mode="cosine", warmup_epochs=5.0, lr_decay_epoch="30,60,80")
    flags.add_elastic_args(parser, local_batch_size=32, lr=0.1)
    return parser


def parse_args(argv=None):
    """Parse and validate everything that can be checked before the data is opened."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model not in model_names():
        parser.error("--model %r is not a ResNet of the GluonCV model zoo; valid: %s"
                     % (args.model, ", ".join(model_names())))
    if not args.synthetic:
        missing = [name for name in ("train.rec", "train.idx", "val.rec", "val.idx")
                   if not os.path.isfile(os.path.join(args.data_dir, name))]
        if not os.path.isdir(args.data_dir):
            parser.error("--data-dir %s does not exist (or pass --synthetic)" % args.data_dir)
        if missing:
            parser.error("--data-dir %s lacks %s (ImageNet RecordIO made by im2rec)"
                         % (args.data_dir, ", ".join(missing)))
    args.parser = parser
    return args


# ------------------------------------------------------------------------------------- data
class SyntheticImages(gluon.data.Dataset):
    """``num_samples`` random RGB images (HWC uint8) and labels, a pure function of the index."""

    def __init__(self, num_samples, size, classes, seed=0):
        self._num_samples, self._size, self._classes, self._seed = num_samples, size, classes, seed

    def __len__(self):
        return self._num_samples

    def __getitem__(self, index):
        rng = np.random.RandomState((self._seed * 1000003 + index) % (2 ** 32))
        image = rng.randint(0, 256, size=(self._size, self._size, 3), dtype=np.uint8)
        return mx.nd.array(image, dtype=np.uint8), float(rng.randint(self._classes))


def load_data(args):
    """``(train_set, val_set)`` of ``(HWC uint8 image, label)`` items."""
    if args.synthetic:
        size = int(args.input_size / args.crop_ratio)
        return (SyntheticImages(args.synthetic_samples, size, args.classes, args.seed),
                SyntheticImages(max(1, args.synthetic_samples // 10), size, args.classes,
                                args.seed + 1))
    dataset = gluon.data.vision.ImageRecordDataset
    return (dataset(os.path.join(args.data_dir, "train.rec")),
            dataset(os.path.join(args.data_dir, "val.rec")))


def _normalize(image):
    tensor = mx.nd.image.to_tensor(image)
    return mx.nd.image.normalize(tensor, mean=MEAN_RGB, std=STD_RGB)


class TrainTransform(gluon.data.Dataset):
    """Random-resized crop and horizontal flip, random draws a pure function of (seed, epoch, index).

    Whichever worker (real or virtual) loads a sample, it gets the same crop: the emulated world
    and a real one see identical inputs.
    """

    def __init__(self, dataset, input_size, seed, epoch):
        self._dataset, self._size, self._seed, self._epoch = dataset, input_size, seed, epoch

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        rng = np.random.RandomState((self._seed * 7919 + self._epoch * 104729 + index) % (2 ** 32))
        height, width = image.shape[:2]
        area = height * width
        crop = None
        for _ in range(10):
            target = area * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            crop_w = int(round(np.sqrt(target * ratio)))
            crop_h = int(round(np.sqrt(target / ratio)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                crop = (rng.randint(0, width - crop_w + 1), rng.randint(0, height - crop_h + 1),
                        crop_w, crop_h)
                break
        if crop is None:
            side = min(height, width)
            crop = ((width - side) // 2, (height - side) // 2, side, side)
        image = mx.image.fixed_crop(image, *crop, size=(self._size, self._size))
        if rng.rand() < 0.5:
            image = mx.nd.flip(image, axis=1)
        return _normalize(image), np.float32(label)


class ValTransform(gluon.data.Dataset):
    """Resize the short side to ``input_size / crop_ratio``, center crop ``input_size``."""

    def __init__(self, dataset, input_size, crop_ratio):
        self._dataset, self._size = dataset, input_size
        self._resize = int(np.ceil(input_size / crop_ratio))

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        image = mx.image.resize_short(image, self._resize)
        image, _ = mx.image.center_crop(image, (self._size, self._size))
        return _normalize(image), np.float32(label)


def make_train_loader(args, train_set):
    """``make_loader(batch_indices, epoch)`` for :class:`gluon_elastic.recipe.ElasticLoop`."""
    def make_loader(batch_indices, epoch):
        return gluon.data.DataLoader(TrainTransform(train_set, args.input_size, args.seed, epoch),
                                     batch_sampler=batch_indices,
                                     num_workers=args.num_data_workers)
    return make_loader


# ------------------------------------------------------------------------------------ model
def build_model(args, ctx):
    """The ResNet, initialised (MSRA), shapes resolved, cast to ``args.dtype``, hybridized."""
    from gluoncv import model_zoo

    net = model_zoo.get_model(args.model, pretrained=False, classes=args.classes,
                              last_gamma=args.last_gamma)
    net.initialize(mx.init.MSRAPrelu(), ctx=ctx)
    net(mx.nd.zeros((1, 3, args.input_size, args.input_size), ctx=ctx))
    if args.dtype != "float32":
        net.cast(args.dtype)
    if args.no_wd:
        # BatchNorm scale/shift and biases are not what weight decay is meant to shrink.
        for param in net.collect_params(".*beta|.*gamma|.*bias").values():
            param.wd_mult = 0.0
    # Plain hybridize: with static_alloc, BatchNorm's running statistics were not updated in the
    # parameters once grad_req had been switched to 'add' for emulated workers (MXNet 1.9.1).
    net.hybridize()
    return net


def make_loss_fn(args, ctx):
    """``loss_fn(net, (data, label))``: per-sample softmax cross-entropy with label smoothing."""
    loss = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=args.label_smoothing == 0)
    smoothing = args.label_smoothing

    def loss_fn(net, shard):
        data, label = shard
        data = data.as_in_context(ctx).astype(args.dtype, copy=False)
        label = label.as_in_context(ctx)
        output = net(data).astype("float32", copy=False)
        if smoothing:
            label = mx.nd.one_hot(label, args.classes, on_value=1 - smoothing + smoothing / args.classes,
                                  off_value=smoothing / args.classes)
        return loss(output, label)
    return loss_fn


# ------------------------------------------------------------------------------- evaluation
def make_evaluate_fn(args, val_set, ctx, batch_size=None):
    """``evaluate(net, indices)`` -> ``(top1 correct, top5 correct, count)`` on those samples."""
    transformed = ValTransform(val_set, args.input_size, args.crop_ratio)
    batch_size = batch_size or args.local_batch_size

    def evaluate(net, indices):
        correct1 = correct5 = count = 0
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        loader = gluon.data.DataLoader(transformed, batch_sampler=chunks,
                                       num_workers=args.num_data_workers)
        for data, label in progress(loader, total=len(chunks), desc="validation"):
            output = net(data.as_in_context(ctx).astype(args.dtype, copy=False))
            output = output.astype("float32", copy=False).asnumpy()
            label = label.asnumpy().astype(np.int64)
            top = np.argsort(-output, axis=1)[:, :5]
            correct1 += int((top[:, 0] == label).sum())
            correct5 += int((top == label[:, None]).any(axis=1).sum())
            count += len(label)
        return correct1, correct5, count
    return evaluate


def reduce_metrics(statistics):
    """Top-1 and top-5 accuracy from every rank's ``(top1 correct, top5 correct, count)``."""
    correct1, correct5, count = (sum(values) for values in zip(*statistics))
    return {"top1": correct1 / max(count, 1), "top5": correct5 / max(count, 1)}


# ------------------------------------------------------------------------------------ train
def train(args):
    """Build everything from parsed ``args`` and train; returns the :class:`ElasticLoop`."""
    train_set, val_set = load_data(args)
    backend, ctx = recipe.prepare(args.parser, args, len(train_set))
    if args.dtype == "float16" and ctx.device_type != "gpu":
        args.parser.error("--dtype float16 needs a GPU context; this run is on %s" % ctx)
    net = build_model(args, ctx)
    optimizer_params = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd,
                        "multi_precision": args.dtype == "float16"}
    return recipe.fit(args, backend, ctx, net, "nag", optimizer_params,
                      recipe.build_schedule(args.parser, args, len(train_set)), len(train_set),
                      make_train_loader(args, train_set), make_loss_fn(args, ctx),
                      make_evaluate_fn(args, val_set, ctx), reduce_metrics, len(val_set),
                      args.model)


def main(argv=None):
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
