"""Tiny data sets in the real on-disk formats of the recipes, generated at test time, and helpers.

* ImageNet RecordIO: ``train.rec/.idx`` and ``val.rec/.idx`` of JPEG images packed with
  ``mx.recordio.pack_img`` (what ``im2rec`` writes);
* Pascal VOC detection: ``VOCdevkit/VOC2007/{Annotations/*.xml, JPEGImages/*.jpg,
  ImageSets/Main/*.txt}``;
* COCO detection: ``annotations/instances_<split>.json`` and ``<split>/*.jpg``;
* Pascal VOC segmentation: ``VOC2012/{JPEGImages, SegmentationClass/*.png,
  ImageSets/Segmentation/*.txt}``; ADE20K: ``ADEChallengeData2016/{images,annotations}/{training,
  validation}``.

Images carry a class-dependent colour so that a few steps of training can move the metrics.
"""
import importlib.util
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200)]


def load_recipe(relative_path):
    """Import a recipe script (``scripts/.../x.py``) as a module."""
    path = os.path.join(ROOT, relative_path)
    name = "recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def gluoncv_default(parser, args, flag, dest):
    """The default of GluonCV's ``flag``: its parsed value, or for a flag that parses to None
    until the recipe resolves it (``--batch-size``, so that typing the default counts as given)
    the default its help states."""
    return getattr(parser._option_string_actions[flag], "gluoncv_default", getattr(args, dest))


def _image(rng, size, label):
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    noise = rng.normal(0, 25, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _write_jpeg(path, image):
    from PIL import Image

    Image.fromarray(image).save(path, quality=92)


def make_imagenet_rec(directory, num_train=16, num_val=8, classes=4, size=40, seed=0):
    """Write ``train.rec/.idx`` and ``val.rec/.idx``; returns ``directory``."""
    import mxnet as mx

    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        record = mx.recordio.MXIndexedRecordIO(os.path.join(directory, split + ".idx"),
                                               os.path.join(directory, split + ".rec"), "w")
        for index in range(count):
            label = index % classes
            # im2rec stores images BGR (OpenCV); pack_img encodes with OpenCV.
            image = _image(rng, size, label)[:, :, ::-1]
            header = mx.recordio.IRHeader(0, float(label), index, 0)
            record.write_idx(index, mx.recordio.pack_img(header, image, quality=92, img_fmt=".jpg"))
        record.close()
    return directory


def _boxes(rng, size, count, classes):
    boxes = []
    for _ in range(count):
        width, height = rng.randint(size // 4, size // 2, size=2)
        x0, y0 = rng.randint(0, size - width), rng.randint(0, size - height)
        boxes.append((int(x0), int(y0), int(x0 + width), int(y0 + height), int(rng.randint(classes))))
    return boxes


def _paint(rng, size, boxes):
    image = np.clip(rng.normal(110, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    for x0, y0, x1, y1, label in boxes:
        image[y0:y1, x0:x1] = PALETTE[label % len(PALETTE)]
    return image


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle")


def make_voc_detection(directory, num_train=8, num_val=4, size=64, seed=0):
    """Write ``VOCdevkit/VOC2007`` with ``trainval`` and ``test`` splits; returns ``VOCdevkit``."""
    rng = np.random.RandomState(seed)
    root = os.path.join(directory, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, count, offset in (("trainval", num_train, 0), ("test", num_val, 1000)):
        names = []
        for index in range(count):
            name = "%06d" % (offset + index)
            names.append(name)
            boxes = _boxes(rng, size, 1 + index % 2, len(VOC_CLASSES))
            _write_jpeg(os.path.join(root, "JPEGImages", name + ".jpg"), _paint(rng, size, boxes))
            objects = "".join(
                "<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>"
                "<difficult>0</difficult><bndbox><xmin>%d</xmin><ymin>%d</ymin><xmax>%d</xmax>"
                "<ymax>%d</ymax></bndbox></object>" % (VOC_CLASSES[label], x0 + 1, y0 + 1, x1, y1)
                for x0, y0, x1, y1, label in boxes)
            with open(os.path.join(root, "Annotations", name + ".xml"), "w") as fout:
                fout.write("<annotation><folder>VOC2007</folder><filename>%s.jpg</filename>"
                           "<size><width>%d</width><height>%d</height><depth>3</depth></size>"
                           "<segmented>0</segmented>%s</annotation>" % (name, size, size, objects))
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as fout:
            fout.write("\n".join(names) + "\n")
    return os.path.join(directory, "VOCdevkit")


def make_coco_detection(directory, num_train=8, num_val=4, size=64, seed=0):
    """Write ``annotations/instances_{train2017,val2017}.json`` and the JPEGs; returns ``directory``."""
    rng = np.random.RandomState(seed)
    categories = [{"id": 10 + index, "name": name, "supercategory": "thing"}
                  for index, name in enumerate(VOC_CLASSES)]
    os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
    annotation_id = 1
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        os.makedirs(os.path.join(directory, split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = 100 + index
            file_name = "%012d.jpg" % image_id
            boxes = _boxes(rng, size, 1 + index % 2, len(categories))
            _write_jpeg(os.path.join(directory, split, file_name), _paint(rng, size, boxes))
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for x0, y0, x1, y1, label in boxes:
                annotations.append({"id": annotation_id, "image_id": image_id,
                                    "category_id": categories[label]["id"],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                    "iscrowd": 0})
                annotation_id += 1
        with open(os.path.join(directory, "annotations", "instances_%s.json" % split), "w") as fout:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, fout)
    return directory


def _segmentation_pair(rng, size, classes):
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes = _boxes(rng, size, 2, classes - 1)
    for x0, y0, x1, y1, label in boxes:
        mask[y0:y1, x0:x1] = label + 1
    image = np.clip(rng.normal(110, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    for label in range(1, classes):
        image[mask == label] = PALETTE[label % len(PALETTE)]
    return image, mask


def make_voc_segmentation(directory, num_train=6, num_val=4, size=64, seed=0):
    """Write ``VOC2012`` with ``trainval`` and ``val`` segmentation splits; returns ``directory``."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    root = os.path.join(directory, "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, count, offset in (("trainval", num_train, 0), ("val", num_val, 1000)):
        names = []
        for index in range(count):
            name = "2012_%06d" % (offset + index)
            names.append(name)
            image, mask = _segmentation_pair(rng, size, 5)
            mask[0, :] = 255  # VOC's "void" border label, ignored by training and metrics
            _write_jpeg(os.path.join(root, "JPEGImages", name + ".jpg"), image)
            Image.fromarray(mask, mode="L").save(os.path.join(root, "SegmentationClass", name + ".png"))
        with open(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), "w") as fout:
            fout.write("\n".join(names) + "\n")
    return directory


def make_ade20k(directory, num_train=6, num_val=4, size=64, seed=0):
    """Write ``ADEChallengeData2016`` (masks: 0 = other, k = class k - 1); returns ``directory``."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    root = os.path.join(directory, "ADEChallengeData2016")
    for split, count in (("training", num_train), ("validation", num_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for index in range(count):
            name = "ADE_%s_%08d" % ("train" if split == "training" else "val", index + 1)
            image, mask = _segmentation_pair(rng, size, 5)
            _write_jpeg(os.path.join(root, "images", split, name + ".jpg"), image)
            Image.fromarray(mask, mode="L").save(os.path.join(root, "annotations", split,
                                                              name + ".png"))
    return directory


def parse_log(text):
    """Lines of the recipes' fixed log format, as dicts, from rank 0's output.

    The reader written from GluonCV's printed format (:func:`gluon_elastic.recipe_log.
    parse_gluoncv_log`): every recipe's lines must be readable by it.
    """
    from gluon_elastic.recipe_log import parse_gluoncv_log

    return parse_gluoncv_log(text)


def exit_code(module, argv, capsys, train=False):
    """Exit code and standard error of a recipe that must refuse ``argv`` with ``SystemExit``.

    Parameters
    ----------
    module : module
        The recipe, from :func:`load_recipe`.
    argv : list of str
        Its command line.
    capsys : pytest fixture
        Captures what the recipe prints.
    train : bool
        Also run ``module.train`` (checks that need the data set come there).

    Returns
    -------
    (int, str)
    """
    import pytest

    with pytest.raises(SystemExit) as info:
        args = module.parse_args(argv)
        if train:
            module.train(args)
    return info.value.code, capsys.readouterr().err


def run_kvstore_group(command, timeout):
    """Run ``command`` as 2 workers of a KVStore group with 1 server on this machine; every
    process of the group is killed at the end (``tests/processes.py``).

    Returns
    -------
    (int, str)
        The group's exit code and its prefixed output.
    """
    if os.path.join(ROOT, "tests") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
    import processes

    return processes.run_kvstore_group(command, 2, 1, timeout,
                                       env_extra={"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})


def run_horovod_elastic(work_dir, recipe_argv, schedule, np_start, min_np, max_np, timeout=200):
    """Run a recipe under elastic ``horovodrun`` with schedule-driven discovery on this machine.

    ``schedule`` is a :mod:`scripts/discovery.py` schedule over the samples trained, which rank 0
    writes to ``work_dir/progress`` (given to the recipe as ``--progress-file``). Every process of
    the job is killed at the end, also on failure or timeout: they are found as descendants of
    horovodrun and by that progress file on their command line.

    Returns
    -------
    (int, str)
        Exit code of horovodrun (None after a timeout) and its output.
    """
    if os.path.join(ROOT, "tests") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
    from processes import run_elastic_horovodrun

    argv = [sys.executable] + list(recipe_argv) + ["--backend", "horovod"]
    return run_elastic_horovodrun(work_dir, argv, schedule, np_start, min_np, max_np, timeout,
                                  env_extra={"PYTHONPATH": ROOT,
                                             "HOROVOD_GLOO_TIMEOUT_SECONDS": "120"})


def check_one_grow(output, index, num_train, local_batch_size, epochs):
    """Assert what a 1 -> 2 worker Horovod job must show; returns the step of the change.

    ``index`` is :func:`gluon_elastic.recipe.latest_checkpoint` of the run. The change lands after some steps
    of ``local_batch_size`` (in any epoch but the end of the last); from then on every step has
    twice that. Within each epoch the samples are split over the world of the moment, each at most
    once, and only a short tail is dropped.
    """
    import re

    assert "Traceback" not in output, output[-4000:]
    global_batch_size = 2 * local_batch_size
    changes = re.findall(r"world change at iteration (\d+): world 1 -> 2, global batch %d -> %d, "
                         r"k=2, lr ([\d.e-]+) -> target ([\d.e-]+), ramp over 16 iterations"
                         % (local_batch_size, global_batch_size), output)
    assert len(changes) == 1, output[-4000:]
    change_step = int(changes[0][0])
    # The trainer logs 6 significant digits: the target LR is twice the LR in use (k = 2).
    assert abs(float(changes[0][2]) - 2 * float(changes[0][1])) <= 1e-5 * float(changes[0][2])
    assert "reset: rank 0 of 1 -> rank 0 of 2" in output
    records = parse_log(output)
    steps = [(r["epoch"], r["world"], r["global_batch"]) for r in records if r["kind"] == "batch"]
    worlds = [(world, batch) for _, world, batch in steps]
    assert worlds == [(1, local_batch_size)] * change_step + \
        [(2, global_batch_size)] * (len(worlds) - change_step), worlds
    assert change_step >= 1 and len(worlds) > change_step, worlds
    total_samples = 0
    for epoch in range(epochs):
        small = sum(1 for e, world, _ in steps if e == epoch and world == 1)
        large = sum(1 for e, world, _ in steps if e == epoch and world == 2)
        assert large == (num_train - local_batch_size * small) // global_batch_size, (epoch, steps)
        total_samples += local_batch_size * small + global_batch_size * large
    assert len([r for r in records if r["kind"] == "validation"]) == epochs
    assert index["world_size"] == 2, index
    assert (index["iteration"], index["progress"]) == (len(worlds), total_samples), index
    assert index["sampler"]["epoch"] == epochs
    return change_step
