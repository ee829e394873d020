"""Elastic ImageNet classification that takes GluonCV 0.10's ``train_imagenet.py`` command lines.

Every flag of GluonCV 0.10's ``scripts/classification/imagenet/train_imagenet.py`` is accepted
with GluonCV's meaning and default (table in ``scripts/classification/README.md``); the elastic
flags (:mod:`gluon_elastic.flags`) come on top. GluonCV's published ResNet-50 v1b command, on
one process (the per-worker batch is ``--batch-size`` x ``max(1, --num-gpus)``)::

    python scripts/classification/train_imagenet.py \\
        --rec-train ~/imagenet/rec/train.rec --rec-train-idx ~/imagenet/rec/train.idx \\
        --rec-val ~/imagenet/rec/val.rec --rec-val-idx ~/imagenet/rec/val.idx \\
        --model resnet50_v1b --mode hybrid --lr 0.4 --lr-mode cosine --num-epochs 120 \\
        --batch-size 128 --num-gpus 8 -j 60 --warmup-epochs 5 --use-rec --last-gamma \\
        --no-wd --label-smoothing --save-dir params_resnet50_v1b

The same with ``--backend dist_sync`` under ``python -m gluon_elastic.launch -n N -s S --``, or
``--backend horovod`` under ``python -m gluon_elastic.horovodrun`` (elastic), and
``--emulate-schedule 0:8,30:128,60:16`` for the paper's schedule emulated in one process.

Data: ``--use-rec`` reads ``--rec-train``/``--rec-val`` (with their ``.idx``) through MXNet's
``ImageRecordIter`` with GluonCV's augmentation; otherwise ``--data-dir`` holds ``train/`` and
``val/`` with one folder of images per class (GluonCV's ImageNet layout); ``--synthetic`` trains on
generated images. Models: ResNet v1/v1b-v1s/v2, ResNeXt, SE-ResNet, MobileNet v1/v2/v3 and VGG of
the GluonCV model zoo, trained from scratch (nothing is downloaded).
"""
import argparse
import contextlib
import logging
import math
import os
import pickle
import random
import re

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_elastic import flags, gluoncv_flags, recipe
from gluon_elastic.devices import split_and_load
from gluon_elastic.progress import progress
from gluon_elastic.recipe_log import GluonCVClassificationLog

# The families of the model zoo that train from scratch offline (the pruned ResNets and the
# video and int8 variants are left out).
_MODEL_FAMILIES = re.compile(
    r"^(resnet\d+_v(1|2|1b|1c|1d|1e|1s)|resnet\d+_v1b_gn|resnext\d+e?_\d+x\d+d|se_resnet\d+_v[12]|"
    r"mobilenet[\d.]+|mobilenetv2_[\d.]+|mobilenetv3_(large|small)|vgg\d+(_bn)?)$")
# GluonCV's normalisation: RGB mean and standard deviation in [0, 1] (its Gluon transforms), and
# in [0, 255] as its get_data_rec hands them to ImageRecordIter (not 255 x the former).
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
REC_MEAN_RGB = (123.68, 116.779, 103.939)
REC_STD_RGB = (58.393, 57.12, 57.375)
# GluonCV's colour augmentation strengths (not flags in GluonCV either).
JITTER_PARAM, LIGHTING_PARAM = 0.4, 0.1

logger = logging.getLogger("gluon_elastic.recipe")


def model_names():
    """Names of the GluonCV model zoo's classification models this recipe trains."""
    from gluoncv import model_zoo

    return [name for name in model_zoo.get_model_list() if _MODEL_FAMILIES.match(name)]


# --------------------------------------------------------------------------------- arguments
def build_parser():
    """GluonCV's flags, the recipe's own, and the elastic ones, in one parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    imagenet = os.path.join("~", ".mxnet", "datasets", "imagenet")
    data = parser.add_argument_group("data (GluonCV)")
    data.add_argument("--data-dir", default=imagenet,
                      help="image folders: DATA_DIR/train and DATA_DIR/val, one folder per class "
                           "(default: %(default)s)")
    for split in ("train", "val"):
        data.add_argument("--rec-%s" % split, default=os.path.join(imagenet, "rec", split + ".rec"),
                          help="RecordIO file of the %s set (default: %%(default)s)" % split)
        data.add_argument("--rec-%s-idx" % split,
                          default=os.path.join(imagenet, "rec", split + ".idx"),
                          help="index of --rec-%s (default: %%(default)s)" % split)
    data.add_argument("--use-rec", action="store_true",
                      help="read the RecordIO files with ImageRecordIter (GluonCV's fast path)")
    data.add_argument("--rec-reader", choices=("iter", "index"), default="iter",
                      help="with --use-rec: iter: ImageRecordIter over this worker's part (exactly "
                           "once while the world holds within an epoch); index: records read by "
                           "the elastic sampler's indices (exactly once across any resize) "
                           "(not a GluonCV flag) (default: %(default)s)")
    data.add_argument("--input-size", type=flags.positive_int, default=224,
                      help="training and validation crop size (default: %(default)s)")
    data.add_argument("--crop-ratio", type=gluoncv_flags.crop_ratio, default=0.875,
                      help="validation: center crop / resized short side, in (0, 1] "
                           "(default: %(default)s)")
    data.add_argument("--classes", type=flags.positive_int, default=1000,
                      help="number of classes; every label of the data must be below it "
                           "(not a GluonCV flag: GluonCV fixes 1000) (default: %(default)s)")
    data.add_argument("--synthetic", action="store_true",
                      help="generated images instead of a data set (throughput runs)")
    data.add_argument("--synthetic-samples", type=flags.positive_int, default=12800,
                      help="training images per epoch with --synthetic (default: %(default)s)")

    model = parser.add_argument_group("model (GluonCV)")
    model.add_argument("--model", required=True, help="a classification model of the GluonCV "
                       "model zoo (ResNet, ResNeXt, SE-ResNet, MobileNet v1/v2/v3, VGG)")
    model.add_argument("--mode", choices=("imperative", "symbolic", "hybrid"), default=None,
                       help="hybrid: hybridize the model; otherwise it runs imperatively")
    model.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                       help="float16: mixed precision with float32 master weights (needs a GPU)")
    model.add_argument("--use-pretrained", action="store_true",
                       help="pretrained weights (refused: they need a download)")
    model.add_argument("--use_se", action="store_true", help="SE layers in ResNeXt")
    model.add_argument("--batch-norm", action="store_true", help="BatchNorm in VGG")
    model.add_argument("--use-gn", action="store_true", help="GroupNorm instead of BatchNorm")
    model.add_argument("--last-gamma", action="store_true",
                       help="initialise the last BatchNorm gamma of each residual block to 0")

    training = parser.add_argument_group("training (GluonCV)")
    training.add_argument("--num-epochs", "--epochs", dest="epochs", type=flags.positive_int,
                          default=3, help="number of training epochs (default: %(default)s)")
    training.add_argument("--momentum", type=gluoncv_flags.unit_interval, default=0.9,
                          help="NAG momentum, in [0, 1) (default: %(default)s)")
    training.add_argument("--wd", type=flags.non_negative_float, default=0.0001,
                          help="weight decay, >= 0 (default: %(default)s)")
    training.add_argument("--no-wd", action="store_true",
                          help="no weight decay on biases and BatchNorm beta/gamma")
    training.add_argument("--label-smoothing", type=gluoncv_flags.unit_interval, nargs="?",
                          const=0.1, default=0.0,
                          help="label smoothing; the bare flag (GluonCV's form) means 0.1, a value "
                               "in [0, 1) sets it (default: off)")
    training.add_argument("--mixup", action="store_true", help="train with mixup")
    training.add_argument("--mixup-alpha", type=flags.positive_float, default=0.2,
                          help="Beta distribution parameter of mixup (default: %(default)s)")
    training.add_argument("--mixup-off-epoch", type=flags.non_negative_int, default=0,
                          help="last epochs trained without mixup (default: %(default)s)")
    training.add_argument("--teacher", default=None,
                          help="teacher model for distillation (refused: it needs pretrained "
                               "weights downloaded)")
    training.add_argument("--temperature", type=flags.positive_float, default=20,
                          help="distillation temperature (default: %(default)s)")
    training.add_argument("--hard-weight", type=gluoncv_flags.bounded_float(0.0, 1.0,
                                                                            high_inclusive=True),
                          default=0.5, help="weight of the hard-label loss in distillation "
                                            "(default: %(default)s)")

    output = parser.add_argument_group("output (GluonCV)")
    output.add_argument("--save-frequency", type=flags.non_negative_int, default=10,
                        help="save parameters and trainer states every this many epochs "
                             "(0: save nothing to --save-dir) (default: %(default)s)")
    output.add_argument("--save-dir", default="params",
                        help="directory of GluonCV's parameter and states files "
                             "(default: %(default)s)")
    output.add_argument("--resume-epoch", type=flags.non_negative_int, default=0,
                        help="epoch to resume training from (default: %(default)s)")
    output.add_argument("--resume-params", default="",
                        help="parameters to start from (save_parameters file)")
    output.add_argument("--resume-states", default="",
                        help="trainer states to start from (gluon.Trainer or ElasticTrainer "
                             "save_states file)")
    output.add_argument("--logging-file", default="train_imagenet.log",
                        help="rank 0 appends its log here too (default: %(default)s)")

    recipe.add_run_args(parser, log_interval=50)
    recipe.add_schedule_args(parser, lr_mode="step", warmup_epochs=0.0, lr_decay_epoch="40,60",
                             warmup_lr=0.0, lr_power=2.0)
    flags.add_elastic_args(parser, lr=0.1)
    gluoncv_flags.add_device_batch_args(parser, batch_size=32)
    return parser


def parse_args(argv=None):
    """Parse and check everything that needs no model and no network: exit 2 on bad input.

    Reads the data set's size and labels (for the RecordIO files, one small read per record).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser
    if args.model not in model_names():
        parser.error("--model %r is not a classification model this recipe trains; valid: %s"
                     % (args.model, ", ".join(model_names())))
    if args.use_pretrained:
        gluoncv_flags.refuse_download(parser, "--use-pretrained", "the weights of %s" % args.model)
    if args.teacher is not None and args.hard_weight < 1.0:
        # GluonCV uses the teacher only with --hard-weight below 1.
        gluoncv_flags.refuse_download(parser, "--teacher", "the pretrained teacher %s"
                                      % args.teacher)
    gluoncv_flags.resolve_local_batch_size(parser, args)
    if args.resume_epoch >= args.epochs:
        parser.error("--resume-epoch %d leaves nothing to train in --num-epochs %d"
                     % (args.resume_epoch, args.epochs))
    for flag, path in (("--resume-params", args.resume_params),
                       ("--resume-states", args.resume_states)):
        if path and not os.path.isfile(path):
            parser.error("%s %s: no such file" % (flag, path))
    if args.resume_states:
        try:
            with open(args.resume_states, "rb") as fin:
                pickle.load(fin)
        except Exception as err:  # pickle raises several types for damaged input
            parser.error("--resume-states %s is not a trainer states file: %s"
                         % (args.resume_states, err))
    gluoncv_flags.check_output_paths(
        parser,
        directories=[("--save-dir", args.save_dir if args.save_frequency else None),
                     ("--checkpoint-dir", args.checkpoint_dir)],
        files=[("--logging-file", args.logging_file), ("--metrics-file", args.metrics_file),
               ("--progress-file", args.progress_file)])
    _check_data(parser, args)
    return args


def _check_data(parser, args):
    """Set ``args.num_train_samples``/``num_val_samples``; exit 2 when the data cannot be used."""
    if args.synthetic:
        args.num_train_samples = args.synthetic_samples
        args.num_val_samples = max(1, args.synthetic_samples // 10)
        return
    if args.use_rec:
        for split in ("train", "val"):
            rec_flag = "--rec-%s" % split
            rec = os.path.expanduser(getattr(args, "rec_" + split))
            idx = os.path.expanduser(getattr(args, "rec_%s_idx" % split))
            setattr(args, "rec_" + split, rec)
            setattr(args, "rec_%s_idx" % split, idx)
            labels = gluoncv_flags.check_record_pair(parser, rec_flag, rec, rec_flag + "-idx", idx)
            gluoncv_flags.check_labels(parser, labels, args.classes, rec)
            setattr(args, "num_%s_samples" % split, len(labels))
        return
    args.data_dir = os.path.expanduser(args.data_dir)
    for split in ("train", "val"):
        folder = os.path.join(args.data_dir, split)
        if not os.path.isdir(folder):
            parser.error("--data-dir %s has no %s/ folder of class folders (or pass --use-rec "
                         "with --rec-train/--rec-val, or --synthetic)" % (args.data_dir, split))
        dataset = gluon.data.vision.ImageFolderDataset(folder)
        if len(dataset) == 0:
            parser.error("--data-dir %s: %s holds no images" % (args.data_dir, folder))
        gluoncv_flags.check_labels(parser, [label for _, label in dataset.items], args.classes,
                                   folder)
        setattr(args, "num_%s_samples" % split, len(dataset))


# ------------------------------------------------------------------------------------- data
class CorruptRecordError(RuntimeError):
    """An image of the data set cannot be decoded; the message names the file and the record."""


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


class RecordImages(gluon.data.Dataset):
    """Random access to an indexed RecordIO file: ``(HWC uint8 RGB image, label)`` by position.

    A record that does not decode raises :class:`CorruptRecordError` naming the file and key.
    """

    def __init__(self, path_imgrec, path_imgidx):
        self._rec, self._idx = path_imgrec, path_imgidx
        self._reader = None
        with open(path_imgidx) as fin:
            self._keys = [int(line.split()[0]) for line in fin if line.strip()]

    def __len__(self):
        return len(self._keys)

    def __getitem__(self, index):
        if self._reader is None:
            # Opened lazily, so that every data-loader process has its own file handle.
            self._reader = mx.recordio.MXIndexedRecordIO(self._idx, self._rec, "r")
        key = self._keys[index]
        header, payload = mx.recordio.unpack(self._reader.read_idx(key))
        try:
            image = mx.image.imdecode(payload)
        except mx.base.MXNetError as err:
            raise CorruptRecordError("%s: record %d (key %d) does not decode as an image: %s"
                                     % (self._rec, index, key, str(err).splitlines()[0])) from None
        label = header.label if np.isscalar(header.label) else header.label[0]
        return image, float(label)


class FolderImages(gluon.data.Dataset):
    """GluonCV's ImageNet folder layout: ``(HWC uint8 RGB image, label)``; names a bad file."""

    def __init__(self, folder):
        self._dataset = gluon.data.vision.ImageFolderDataset(folder)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        path, label = self._dataset.items[index]
        try:
            return self._dataset[index][0], float(label)
        except mx.base.MXNetError as err:
            raise CorruptRecordError("%s: image %d does not decode: %s"
                                     % (path, index, str(err).splitlines()[0])) from None


def load_data(args):
    """``(train_set, val_set)`` of ``(HWC uint8 image, label)`` items (random access)."""
    if args.synthetic:
        size = int(math.ceil(args.input_size / args.crop_ratio))
        return (SyntheticImages(args.num_train_samples, size, args.classes, args.seed),
                SyntheticImages(args.num_val_samples, size, args.classes, args.seed + 1))
    if args.use_rec:
        return (RecordImages(args.rec_train, args.rec_train_idx),
                RecordImages(args.rec_val, args.rec_val_idx))
    return (FolderImages(os.path.join(args.data_dir, "train")),
            FolderImages(os.path.join(args.data_dir, "val")))


def gluoncv_train_transform(input_size):
    """GluonCV's ``transform_train`` (``get_data_loader`` of its ``train_imagenet.py``):
    random-resized crop, flip, colour jitter, PCA lighting noise, tensor, ImageNet normalisation."""
    from mxnet.gluon.data.vision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(input_size),
        transforms.RandomFlipLeftRight(),
        transforms.RandomColorJitter(brightness=JITTER_PARAM, contrast=JITTER_PARAM,
                                     saturation=JITTER_PARAM),
        transforms.RandomLighting(LIGHTING_PARAM),
        transforms.ToTensor(),
        transforms.Normalize(MEAN_RGB, STD_RGB)])


def gluoncv_val_transform(input_size, crop_ratio):
    """GluonCV's ``transform_test``: short side to ``ceil(input_size / crop_ratio)``, center crop
    ``input_size``, tensor, ImageNet normalisation."""
    from mxnet.gluon.data.vision import transforms

    return transforms.Compose([
        transforms.Resize(int(math.ceil(input_size / crop_ratio)), keep_ratio=True),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN_RGB, STD_RGB)])


@contextlib.contextmanager
def seeded(seed):
    """Draw the random choices of GluonCV's transforms from ``seed``: Python's ``random`` (the
    crop; its state is restored afterwards) and MXNet's CPU generator (flip, colour, lighting;
    MXNet cannot save that state, so it is left seeded: random operators on the CPU after this
    depend on the last sample loaded, which keeps a run reproducible)."""
    state = random.getstate()
    random.seed(seed)
    mx.random.seed(seed, ctx=mx.cpu())
    try:
        yield
    finally:
        random.setstate(state)


class TrainTransform(gluon.data.Dataset):
    """GluonCV's training transform (:func:`gluoncv_train_transform`), its random choices a pure
    function of (seed, epoch, index).

    Whichever worker (real or virtual) loads a sample, it gets the same augmentation: the
    emulated world and a real one see identical inputs.
    """

    def __init__(self, dataset, input_size, seed, epoch):
        self._dataset, self._seed, self._epoch = dataset, seed, epoch
        self._transform = gluoncv_train_transform(input_size)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        with seeded(int(self._seed * 7919 + self._epoch * 104729 + index) % (2 ** 32)):
            image = self._transform(image)
        return image, np.float32(label)


class ValTransform(gluon.data.Dataset):
    """GluonCV's validation transform (:func:`gluoncv_val_transform`)."""

    def __init__(self, dataset, input_size, crop_ratio):
        self._dataset = dataset
        self._transform = gluoncv_val_transform(input_size, crop_ratio)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        return self._transform(image), np.float32(label)


def make_train_loader(args, train_set):
    """``make_loader(batch_indices, epoch)`` reading the samples the sampler names."""
    def make_loader(batch_indices, epoch):
        return gluon.data.DataLoader(TrainTransform(train_set, args.input_size, args.seed, epoch),
                                     batch_sampler=batch_indices,
                                     num_workers=args.num_data_workers)
    return make_loader


def record_iter_kwargs(args):
    """GluonCV's ``ImageRecordIter`` arguments of training (``get_data_rec``), but the file,
    batch and shuffling, which the elastic parts set. ``preprocess_threads`` is at least 1 where
    GluonCV passes ``-j`` as it is."""
    return dict(preprocess_threads=max(1, args.num_data_workers),
                data_shape=(3, args.input_size, args.input_size),
                mean_r=REC_MEAN_RGB[0], mean_g=REC_MEAN_RGB[1], mean_b=REC_MEAN_RGB[2],
                std_r=REC_STD_RGB[0], std_g=REC_STD_RGB[1], std_b=REC_STD_RGB[2],
                rand_mirror=True, random_resized_crop=True, max_aspect_ratio=4. / 3.,
                min_aspect_ratio=3. / 4., max_random_area=1, min_random_area=0.08,
                brightness=JITTER_PARAM, saturation=JITTER_PARAM, contrast=JITTER_PARAM,
                pca_noise=LIGHTING_PARAM)


class RecordIterLoader:
    """``make_loader`` for ``--use-rec``: GluonCV's ``ImageRecordIter`` pipeline, elastic.

    Each call builds a :class:`gluon_elastic.data.ElasticRecordIter` over this worker's part of
    ``--rec-train`` for the current world, shuffled with ``--seed`` + epoch and skipping the share
    of the epoch already trained; it then hands out exactly as many images per step as the loop's
    index list for that step holds (the indices themselves are not used: ``ImageRecordIter``
    chooses the images). When emulating, one iterator over the whole file (a world of one) feeds
    every virtual worker. Exactly-once holds when the world does not change within an epoch; see
    ``ElasticRecordIter`` for what happens after a resize in the middle of one.

    A record that does not decode stops training with :class:`CorruptRecordError`, which names the
    file and the record: ``ImageRecordIter`` does not say which record failed, so the records of
    this worker's part are decoded one by one to find it (only after a failure).
    """

    def __init__(self, args):
        self.args = args
        self.trainer = self.sampler = None

    def attach(self, trainer, sampler, resumed):
        """``on_start`` hook of :func:`gluon_elastic.recipe.fit`: the live world and position."""
        self.trainer, self.sampler = trainer, sampler

    def _source(self, epoch, restart=False):
        from gluon_elastic.data import ElasticRecordIter

        args = self.args
        emulated = args.emulate_schedule is not None
        world_size, rank = (1, 0) if emulated else (self.trainer.world_size, self.trainer.rank)
        local_batch_size = (self.trainer.global_batch_size if emulated
                            else self.trainer.local_batch_size)
        # GluonCV's training pipeline of --use-rec, with a part per worker of the current world.
        source = ElasticRecordIter(
            args.rec_train, args.rec_train_idx, world_size, rank, local_batch_size, epoch=epoch,
            processed=0 if restart else self.sampler.processed, shuffle=True, seed=args.seed,
            **record_iter_kwargs(args))
        if restart and source.remaining == 0:
            raise ValueError("%s: part %d of %d holds no record; use fewer workers than records"
                             % (args.rec_train, rank, world_size))
        return source

    def __call__(self, batch_indices, epoch):
        source = self._source(epoch)
        pending_data, pending_label, held = [], [], 0
        stream = iter(source)
        for indices in batch_indices:
            wanted = len(indices)
            while held < wanted:
                try:
                    data, label = next(stream)
                except StopIteration:
                    # Parts differ in size (MXNet gives the last part the rest): a worker whose
                    # part ends before the epoch's last step reads its part again rather than
                    # leaving the others waiting in the reduction.
                    source = self._source(epoch, restart=True)
                    stream = iter(source)
                    continue
                except mx.base.MXNetError as err:
                    raise self._name_corrupt_record(source, err) from None
                pending_data.append(data)
                pending_label.append(label)
                held += data.shape[0]
            data = mx.nd.concat(*pending_data, dim=0) if len(pending_data) > 1 else pending_data[0]
            label = (mx.nd.concat(*pending_label, dim=0) if len(pending_label) > 1
                     else pending_label[0])
            yield data[:wanted], label[:wanted]
            held -= wanted
            pending_data = [data[wanted:]] if held else []
            pending_label = [label[wanted:]] if held else []

    def _name_corrupt_record(self, source, err):
        begin, end = source.part
        images = RecordImages(self.args.rec_train, self.args.rec_train_idx)
        for index in range(begin, end):
            try:
                images[index]
            except CorruptRecordError as found:
                return found
        return CorruptRecordError("%s: ImageRecordIter failed in records %d..%d, none of which "
                                  "fails to decode alone: %s" % (self.args.rec_train, begin,
                                                                 end - 1, str(err).splitlines()[0]))


# ------------------------------------------------------------------------------------ model
def build_model(args, contexts):
    """The model with GluonCV's keyword arguments, initialised (MSRA) on every device of
    ``contexts`` or loaded from ``--resume-params``, cast to ``--dtype``, hybridized with
    ``--mode hybrid``.

    A keyword the model does not take (``--last-gamma`` on a MobileNet, ...) and parameters that
    do not fit the model end the program with exit code 2.
    """
    import gluoncv
    from gluoncv import model_zoo

    kwargs = {"pretrained": False, "classes": args.classes}
    if args.use_gn:
        kwargs["norm_layer"] = gluoncv.nn.GroupNorm
    if args.model.startswith("vgg"):
        kwargs["batch_norm"] = args.batch_norm
    elif args.model.startswith("resnext"):
        kwargs["use_se"] = args.use_se
    if args.last_gamma:
        kwargs["last_gamma"] = True
    given = {"norm_layer": "--use-gn", "batch_norm": "--batch-norm", "use_se": "--use_se",
             "last_gamma": "--last-gamma"}
    try:
        net = model_zoo.get_model(args.model, **kwargs)
    except TypeError as err:
        flag = next((given[key] for key in given if key in str(err)), "a model flag")
        args.parser.error("%s does not apply to --model %s (%s)" % (flag, args.model, err))
    net.initialize(mx.init.MSRAPrelu(), ctx=contexts)
    # One forward resolves the deferred shapes on every device.
    net(mx.nd.zeros((1, 3, args.input_size, args.input_size), ctx=contexts[0]))
    if args.dtype != "float32":
        net.cast(args.dtype)
    if args.resume_params:
        try:
            net.load_parameters(args.resume_params, ctx=contexts)
        except (AssertionError, mx.base.MXNetError, ValueError) as err:
            args.parser.error("--resume-params %s does not fit --model %s --classes %d: %s"
                              % (args.resume_params, args.model, args.classes,
                                 str(err).splitlines()[0]))
    if args.no_wd:
        # BatchNorm scale/shift and biases are not what weight decay is meant to shrink.
        for param in net.collect_params(".*beta|.*gamma|.*bias").values():
            param.wd_mult = 0.0
    if args.mode == "hybrid":
        # Plain hybridize, not GluonCV's static_alloc: with static_alloc BatchNorm's running
        # statistics were not updated once grad_req was 'add' for emulated workers (MXNet 1.9.1).
        net.hybridize()
    return net


class TrainingLoss:
    """``loss_fn(net, (data, label))`` of the loop: GluonCV's loss and training metric.

    The loop calls it once per device with that device's part of the worker's batch, already
    on the device. Softmax cross-entropy on hard labels, label-smoothed one-hot labels
    (``--label-smoothing``), or mixup (``--mixup``: each device's part is mixed with its own
    reversal, as in GluonCV, with ``lam ~ Beta(alpha, alpha)`` drawn per part rather than per
    batch, and 1 in the last ``--mixup-off-epoch`` epochs). The training metric is
    GluonCV's: accuracy on the hard labels, or RMSE between softmax and mixed labels with mixup.
    """

    def __init__(self, args):
        self.args = args
        self.epoch = 0
        self.metric = mx.metric.RMSE() if args.mixup else mx.metric.Accuracy()
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss(
            sparse_label=not (args.label_smoothing or args.mixup))
        self._rng = np.random.RandomState(args.seed)

    def _one_hot(self, label, eta):
        classes = self.args.classes
        return mx.nd.one_hot(label, classes, on_value=1 - eta + eta / classes,
                             off_value=eta / classes)

    def __call__(self, net, shard):
        args = self.args
        data, label = shard
        data = data.astype(args.dtype, copy=False)
        target = label
        if args.mixup:
            lam = self._rng.beta(args.mixup_alpha, args.mixup_alpha)
            if self.epoch >= args.epochs - args.mixup_off_epoch:
                lam = 1.0
            data = lam * data + (1 - lam) * data[::-1]
            target = (lam * self._one_hot(label, args.label_smoothing)
                      + (1 - lam) * self._one_hot(label[::-1], args.label_smoothing))
        elif args.label_smoothing:
            target = self._one_hot(label, args.label_smoothing)
        output = net(data).astype("float32", copy=False)
        with mx.autograd.pause():
            if args.mixup:
                self.metric.update([target], [mx.nd.softmax(output)])
            else:
                self.metric.update([label], [output])
        return self._loss(output, target)


# ------------------------------------------------------------------------------- evaluation
def make_evaluate_fn(args, val_set, contexts, batch_size=None):
    """``evaluate(net, indices)`` -> ``(top1 correct, top5 correct, count)`` on those samples,
    each batch split over the devices of ``contexts``."""
    transformed = ValTransform(val_set, args.input_size, args.crop_ratio)
    batch_size = batch_size or args.local_batch_size
    top_k = min(5, args.classes)

    def evaluate(net, indices):
        correct1 = correct5 = count = 0
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        loader = gluon.data.DataLoader(transformed, batch_sampler=chunks,
                                       num_workers=args.num_data_workers)
        for batch in progress(loader, total=len(chunks), desc="validation"):
            for data, label in split_and_load(batch, contexts):
                output = net(data.astype(args.dtype, copy=False))
                output = output.astype("float32", copy=False).asnumpy()
                label = label.asnumpy().astype(np.int64)
                top = np.argsort(-output, axis=1)[:, :top_k]
                correct1 += int((top[:, 0] == label).sum())
                correct5 += int((top == label[:, None]).any(axis=1).sum())
                count += len(label)
        return correct1, correct5, count
    return evaluate


def reduce_metrics(statistics):
    """GluonCV's validation errors from every rank's ``(top1 correct, top5 correct, count)``."""
    correct1, correct5, count = (sum(values) for values in zip(*statistics))
    return {"err-top1": 1 - correct1 / max(count, 1), "err-top5": 1 - correct5 / max(count, 1)}


# ---------------------------------------------------------------------------------- outputs
class GluonCVOutputs:
    """GluonCV's ``--save-dir`` files, written by rank 0 (``--save-frequency`` 0: none).

    ``imagenet-MODEL-EPOCH.params/.states`` every ``--save-frequency`` epochs and after the last
    epoch, and ``ERR-imagenet-MODEL-EPOCH-best.params/.states`` whenever the validation top-1 error
    is the lowest of this run so far (``ERR`` with 4 decimals). Parameters are
    ``save_parameters`` files and states ``ElasticTrainer.save_states`` files, which
    ``gluon.Trainer.load_states`` reads. The directory is created at the first save.
    """

    def __init__(self, args):
        self.args = args
        self.best_err_top1 = 1.0

    def _save(self, net, trainer, stem):
        os.makedirs(self.args.save_dir, exist_ok=True)
        path = os.path.join(self.args.save_dir, stem)
        net.save_parameters(path + ".params")
        trainer.save_states(path + ".states")

    def on_epoch_end(self, epoch, net, trainer, metrics):
        """Save what GluonCV saves after ``epoch``; rank 0 only."""
        args = self.args
        if not args.save_frequency or trainer.rank != 0:
            return
        err_top1 = metrics.get("err-top1", 1.0)
        if err_top1 < self.best_err_top1:
            self.best_err_top1 = err_top1
            self._save(net, trainer, "%.4f-imagenet-%s-%d-best" % (err_top1, args.model, epoch))
        if (epoch + 1) % args.save_frequency == 0:
            self._save(net, trainer, "imagenet-%s-%d" % (args.model, epoch))

    def at_end(self, net, trainer):
        """The final files of the last epoch; rank 0 only."""
        if self.args.save_frequency and trainer.rank == 0:
            self._save(net, trainer, "imagenet-%s-%d" % (self.args.model, self.args.epochs - 1))


def make_on_start(args, num_train_samples, record_loader=None):
    """``on_start`` of :func:`gluon_elastic.recipe.fit`: GluonCV's ``--resume-states`` and
    ``--resume-epoch`` when no elastic checkpoint was loaded, and the RecordIO loader's view of
    the trainer and sampler."""
    def on_start(trainer, sampler, resumed):
        if record_loader is not None:
            record_loader.attach(trainer, sampler, resumed)
        if resumed or not (args.resume_states or args.resume_epoch):
            return None
        # GluonCV's epochs before --resume-epoch count as trained, at the batch of this start.
        progress_samples = args.resume_epoch * num_train_samples
        iteration = args.resume_epoch * (num_train_samples // trainer.global_batch_size)
        if args.resume_states:
            try:
                trainer.load_states(args.resume_states, iteration=iteration,
                                    progress=progress_samples)
            except ValueError:
                # A file of ElasticTrainer.save_states carries its own iteration and progress.
                trainer.load_states(args.resume_states)
        else:
            # No trainer state (GluonCV's --resume-epoch alone): momentum starts at 0, the
            # schedule and counters at --resume-epoch epochs of samples.
            trainer.iteration = iteration
            trainer.progress = trainer.schedule_progress = progress_samples
        sampler.set_epoch(args.resume_epoch)
        return "started at epoch %d (iteration %d) from %s" % (
            args.resume_epoch, trainer.iteration, args.resume_states or "--resume-epoch")
    return on_start


# ------------------------------------------------------------------------------------ train
def _log_to_file(path):
    """Rank 0's log lines also go to ``path`` (appended, GluonCV's plain lines)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("gluon_elastic").addHandler(handler)
    return handler


def train(args):
    """Build everything from parsed ``args`` and train; returns the :class:`ElasticLoop`."""
    train_set, val_set = load_data(args)
    backend, contexts = recipe.prepare(args.parser, args, args.num_train_samples)
    if args.dtype == "float16" and contexts[0].device_type != "gpu":
        args.parser.error("--dtype float16 needs a GPU context; this run is on %s" % contexts[0])
    net = build_model(args, contexts)
    schedule = recipe.build_schedule(args.parser, args, args.num_train_samples)
    # Everything is checked: from here on files are written.
    handler = _log_to_file(args.logging_file) if backend.rank == 0 and args.logging_file else None
    try:
        if backend.rank == 0:
            logger.info("%s", argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                    if k != "parser"}))
        optimizer_params = {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd,
                            "multi_precision": args.dtype == "float16"}
        record_loader = (RecordIterLoader(args) if args.use_rec and args.rec_reader == "iter"
                         else None)
        loss_fn = TrainingLoss(args)
        base_loader = record_loader or make_train_loader(args, train_set)

        def make_loader(batch_indices, epoch):
            loss_fn.epoch = epoch  # mixup is switched off by epoch
            return base_loader(batch_indices, epoch)

        outputs = GluonCVOutputs(args)
        loop = recipe.fit(args, backend, contexts, net, "nag", optimizer_params, schedule,
                          args.num_train_samples, make_loader, loss_fn,
                          make_evaluate_fn(args, val_set, contexts), reduce_metrics,
                          args.num_val_samples, args.model,
                          log_format=GluonCVClassificationLog(loss_fn.metric),
                          on_epoch_end=outputs.on_epoch_end,
                          on_start=make_on_start(args, args.num_train_samples, record_loader))
        outputs.at_end(loop.net, loop.trainer)
        return loop
    finally:
        if handler is not None:
            logging.getLogger("gluon_elastic").removeHandler(handler)
            handler.close()


def main(argv=None):
    """Command-line entry point: exit 2 on bad input, 1 with one line naming a corrupt record."""
    args = parse_args(argv)
    try:
        train(args)
    except CorruptRecordError as err:
        args.parser.exit(1, "%s: error: %s\n" % (args.parser.prog, err))


if __name__ == "__main__":
    main()
