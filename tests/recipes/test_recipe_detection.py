"""The detection recipe on tiny VOC (XML + JPEG) and COCO (JSON + JPEG) sets: bad input, SSD and
YOLOv3 training locally and emulated, the mAP reduction in closed form, and a 2-worker KVStore run."""
import functools
import os
import sys

import numpy as np
import pytest

import recipe_data
from gluon_elastic import recipe

pytest.importorskip("gluoncv")

det = recipe_data.load_recipe("scripts/detection/train_detection.py")

TINY = ["--data-shape", "64", "--num-data-workers", "0", "--log-interval", "1",
        "--local-batch-size", "2", "--epochs", "1", "--seed", "1"]


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    return recipe_data.make_voc_detection(str(tmp_path_factory.mktemp("voc")), num_train=8,
                                          num_val=4, size=64)


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    return recipe_data.make_coco_detection(str(tmp_path_factory.mktemp("coco")), num_train=8,
                                           num_val=4, size=64)


_exit_code = functools.partial(recipe_data.exit_code, det)


def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(voc_dir, coco_dir, tmp_path,
                                                                   capsys):
    ckpt = str(tmp_path / "ckpt")
    base = TINY + ["--checkpoint-dir", ckpt, "--model", "ssd_300_mobilenet0.25_voc"]
    code, err = _exit_code(base + ["--data-dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere does not exist" in err
    # The default splits include VOC2012, which the tiny set lacks.
    code, err = _exit_code(base + ["--data-dir", voc_dir], capsys)
    assert code == 2 and "not a VOC layout" in err and "VOC2012" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--dataset", "coco"], capsys)
    assert code == 2 and "instances_train2017.json" in err
    code, err = _exit_code(TINY + ["--data-dir", coco_dir, "--dataset", "coco", "--model",
                                   "ssd_9_nothing_coco"], capsys)
    assert code == 2 and "'ssd_9_nothing_coco'" in err and "yolo3_darknet53_voc" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--train-splits", "2007_trainval",
                                   "--emulate-schedule", "0:2,1:8"], capsys, train=True)
    assert code == 2 and "changes the world at epoch 1" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--train-splits", "2007_trainval",
                                   "--emulate-schedule", "0:8"], capsys, train=True)
    assert code == 2 and "global batch 16 (world 8) is larger than the 8 training samples" in err
    assert not os.path.exists(ckpt)


def test_ssd_on_voc_trains_evaluates_and_checkpoints(voc_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    args = det.parse_args(TINY + ["--data-dir", voc_dir, "--train-splits", "2007_trainval",
                                  "--model", "ssd_300_mobilenet0.25_voc", "--checkpoint-dir", ckpt])
    loop = det.train(args)
    assert (loop.trainer.iteration, loop.trainer.progress) == (4, 8)
    (_, metrics), = loop.history
    assert set(metrics) == {"mAP"} and 0.0 <= metrics["mAP"] <= 1.0
    index = recipe.latest_checkpoint(ckpt)
    assert index["sampler"]["epoch"] == 1 and index["iteration"] == index["step"] == 4


def test_yolo3_on_coco_emulated_two_workers(coco_dir):
    args = det.parse_args(TINY + ["--data-dir", coco_dir, "--dataset", "coco", "--model",
                                  "yolo3_mobilenet0.25_coco", "--emulate-schedule", "0:2",
                                  "--epochs", "2"])
    loop = det.train(args)
    # The COCO categories replace the model's 80 classes.
    assert loop.net.classes == list(recipe_data.VOC_CLASSES)
    # 8 images, 2 virtual workers of 2: two steps of 4 per epoch; two epochs, training and
    # inference graphs alternating.
    assert (loop.trainer.world_size, loop.trainer.iteration, loop.trainer.progress) == (2, 4, 16)
    (_, _), (_, metrics) = loop.history
    assert set(metrics) == {"map", "map50"} and 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0


def _record(boxes, classes, scores, gt_boxes, gt_classes):
    return (np.array([boxes], dtype=np.float32), np.array([classes], dtype=np.float32)[..., None],
            np.array([scores], dtype=np.float32)[..., None], np.array([gt_boxes], dtype=np.float32),
            np.array([gt_classes], dtype=np.float32)[..., None], None)


def test_map_reduction_closed_form():
    classes = ("a", "b")
    args_voc = det.parse_args(["--synthetic", "--dataset", "voc"])
    args_voc.synthetic = False
    args_coco = det.parse_args(["--synthetic", "--dataset", "coco"])
    box_a, box_b = [0, 0, 19, 19], [30, 30, 59, 59]
    # Rank 0 finds its object exactly; rank 1 puts a box of the right class on the wrong place.
    rank0 = [_record([box_a], [0], [0.9], [box_a], [0])]
    rank1 = [_record([box_a], [1], [0.8], [box_b], [1])]
    for args, key in ((args_voc, "mAP"), (args_coco, "map")):
        reduce = det.make_reduce_fn(args, classes)
        assert reduce([rank0]) [key] == pytest.approx(1.0)
        # Class a: AP 1; class b: its only detection misses, AP 0; mean 0.5.
        assert reduce([rank0, rank1])[key] == pytest.approx(0.5)
    # VOC counts pixels inclusively: box_a covers 20 x 20. A box of 20 x 12.4 inside it has IoU
    # 0.62, a hit at IoU thresholds 0.50, 0.55 and 0.60 only: 3 of COCO's 10 thresholds.
    reduce = det.make_reduce_fn(args_coco, classes)
    result = reduce([[_record([[0, 0, 19, 11.4]], [0], [0.9], [box_a], [0])]])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.3)


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_ssd_two_kvstore_workers(voc_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    command = [sys.executable, os.path.join(recipe_data.ROOT, "scripts", "detection",
                                            "train_detection.py")]
    command += TINY + ["--data-dir", voc_dir, "--train-splits", "2007_trainval", "--model",
                       "ssd_300_mobilenet0.25_voc", "--backend", "dist_sync",
                       "--checkpoint-dir", ckpt]
    code, log = recipe_data.run_kvstore_group(command, timeout=200)
    assert code == 0, log[-3000:]
    records = recipe_data.parse_log(log)
    # 8 images, 2 workers of 2: two steps of a global batch of 4; progress on rank 0 only.
    assert [(r["batch"], r["world"], r["global_batch"]) for r in records if r["kind"] == "batch"] \
        == [(1, 2, 4), (2, 2, 4)]
    validation = [r for r in records if r["kind"] == "validation"]
    assert len(validation) == 1 and 0.0 <= validation[0]["mAP"] <= 1.0
    progress_sources = {line.split("]")[0] for line in log.splitlines() if "Epoch[" in line}
    assert len(progress_sources) == 1, progress_sources
    index = recipe.latest_checkpoint(ckpt)
    assert (index["world_size"], index["iteration"], index["progress"]) == (2, 2, 8)


@pytest.mark.dist
@pytest.mark.timeout(260)
@pytest.mark.parametrize("model", ["ssd_300_mobilenet0.25_voc", "yolo3_mobilenet0.25_voc"])
def test_horovod_elastic_grow_one_to_two_workers(tmp_path, model):
    """Elastic horovodrun: 1 worker, a second joins once 4 images are trained (the change lands
    when the driver has noticed it, in either epoch); YOLOv3 alternates its 7-input training graph
    and its 1-input inference graph across the epochs."""
    pytest.importorskip("horovod.mxnet")
    voc = recipe_data.make_voc_detection(str(tmp_path / "data"), num_train=48, num_val=4, size=64)
    ckpt = str(tmp_path / "ckpt")
    argv = [os.path.join(recipe_data.ROOT, "scripts", "detection", "train_detection.py")]
    argv += TINY + ["--data-dir", voc, "--train-splits", "2007_trainval", "--model", model,
                    "--checkpoint-dir", ckpt, "--commit-interval", "8", "--epochs", "2"]
    code, output = recipe_data.run_horovod_elastic(str(tmp_path), argv, "0:1;4:2", np_start=1,
                                                   min_np=1, max_np=2, timeout=230)
    assert code == 0, output[-4000:]
    index = recipe.latest_checkpoint(ckpt)
    recipe_data.check_one_grow(output, index, num_train=48, local_batch_size=2, epochs=2)
