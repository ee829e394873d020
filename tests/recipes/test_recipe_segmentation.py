"""The segmentation recipe on tiny VOC and ADE20K layouts (JPEG images, PNG masks): bad input,
FCN training locally, the pixel-accuracy/mIoU reduction over ranks, and a 2-worker KVStore run."""
import functools
import os
import sys

import numpy as np
import pytest

import recipe_data
from gluon_elastic import recipe

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402

seg = recipe_data.load_recipe("scripts/segmentation/train_segmentation.py")

TINY = ["--base-size", "40", "--crop-size", "24", "--num-data-workers", "0", "--log-interval", "1",
        "--local-batch-size", "2", "--epochs", "1", "--seed", "2"]


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    return recipe_data.make_voc_segmentation(str(tmp_path_factory.mktemp("vocseg")), num_train=4,
                                             num_val=2, size=40)


@pytest.fixture(scope="module")
def ade_dir(tmp_path_factory):
    return recipe_data.make_ade20k(str(tmp_path_factory.mktemp("ade")), num_train=4, num_val=2,
                                   size=40)


_exit_code = functools.partial(recipe_data.exit_code, seg)


def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(voc_dir, ade_dir, tmp_path,
                                                                   capsys):
    ckpt = str(tmp_path / "ckpt")
    base = TINY + ["--checkpoint-dir", ckpt]
    code, err = _exit_code(base + ["--data-dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere does not exist" in err
    code, err = _exit_code(base + ["--data-dir", ade_dir], capsys)
    assert code == 2 and "not a voc layout" in err and "SegmentationClass" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--model", "fcn_resnet50_ade",
                                   "--dataset", "voc"], capsys)
    assert code == 2 and "predicts the ade20k classes" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--model", "unet"], capsys)
    assert code == 2 and "'unet'" in err and "fcn_resnet50_voc" in err and "deeplab_resnet101_voc" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--crop-size", "30"], capsys)
    assert code == 2 and "multiple of 8" in err
    code, err = _exit_code(base + ["--data-dir", voc_dir, "--emulate-schedule", "0:3"], capsys,
                           train=True)
    assert code == 2 and "global batch 6 (world 3) is larger than the 4 training samples" in err
    assert not os.path.exists(ckpt)


def test_ade20k_layout_loads_images_and_shifted_masks(ade_dir):
    args = seg.parse_args(TINY + ["--data-dir", ade_dir, "--model", "fcn_resnet50_ade"])
    train_set, val_set = seg.load_data(args)
    assert (len(train_set), len(val_set)) == (4, 2)
    image, mask = val_set[0]
    assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
    # ADE20K stores class k as k + 1 and "other" as 0, which becomes -1 (ignored).
    assert set(np.unique(mask.asnumpy())) <= {-1, 0, 1, 2, 3}


def test_fcn_on_voc_trains_and_evaluates(voc_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    loop = seg.train(seg.parse_args(TINY + ["--data-dir", voc_dir, "--checkpoint-dir", ckpt]))
    assert (loop.trainer.iteration, loop.trainer.progress) == (2, 4)
    (_, metrics), = loop.history
    assert set(metrics) == {"pixAcc", "mIoU"}
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixAcc"] <= 1.0
    index = recipe.latest_checkpoint(ckpt)
    assert index["sampler"]["epoch"] == 1


def test_metric_reduction_over_ranks_equals_one_metric_over_all_pixels():
    from gluoncv.utils.metrics import SegmentationMetric

    args = seg.parse_args(["--synthetic"])
    nclass = seg.num_classes(args)
    rng = np.random.RandomState(0)
    masks = [mx.nd.array(rng.randint(-1, 4, size=(2, 8, 8))) for _ in range(2)]
    logits = [mx.nd.array(rng.normal(size=(2, nclass, 8, 8))) for _ in range(2)]
    whole = SegmentationMetric(nclass)
    per_rank = []
    for mask, logit in zip(masks, logits):
        whole.update(mask, logit)
        metric = SegmentationMetric(nclass)
        metric.update(mask, logit)
        per_rank.append((int(metric.total_correct), int(metric.total_label),
                         np.asarray(metric.total_inter, dtype=np.int64),
                         np.asarray(metric.total_union, dtype=np.int64)))
    reduced = seg.make_reduce_fn(args)(per_rank)
    pixel_accuracy, mean_iou = whole.get()
    assert reduced["pixAcc"] == pytest.approx(pixel_accuracy, rel=1e-12)
    assert reduced["mIoU"] == pytest.approx(mean_iou, rel=1e-12)
    # Perfect predictions: every labelled pixel right.
    mask = mx.nd.array(rng.randint(0, 3, size=(1, 8, 8)))
    perfect = mx.nd.one_hot(mask, nclass).transpose((0, 3, 1, 2))
    metric = SegmentationMetric(nclass)
    metric.update(mask, perfect)
    counts = (int(metric.total_correct), int(metric.total_label),
              np.asarray(metric.total_inter, dtype=np.int64),
              np.asarray(metric.total_union, dtype=np.int64))
    assert seg.make_reduce_fn(args)([counts])["pixAcc"] == pytest.approx(1.0)


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_fcn_two_kvstore_workers(voc_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    command = [sys.executable, os.path.join(recipe_data.ROOT, "scripts", "segmentation",
                                            "train_segmentation.py")]
    command += TINY + ["--data-dir", voc_dir, "--local-batch-size", "1", "--backend", "dist_sync",
                       "--checkpoint-dir", ckpt]
    code, log = recipe_data.run_kvstore_group(command, timeout=260)
    assert code == 0, log[-3000:]
    records = recipe_data.parse_log(log)
    # 4 images, 2 workers of 1: two steps of a global batch of 2.
    assert [(r["batch"], r["world"], r["global_batch"]) for r in records if r["kind"] == "batch"] \
        == [(1, 2, 2), (2, 2, 2)]
    (validation,) = [r for r in records if r["kind"] == "validation"]
    assert 0.0 <= validation["mIoU"] <= 1.0 and 0.0 <= validation["pixAcc"] <= 1.0
    index = recipe.latest_checkpoint(ckpt)
    assert (index["world_size"], index["iteration"], index["progress"]) == (2, 2, 4)


@pytest.mark.dist
@pytest.mark.timeout(260)
def test_fcn_horovod_elastic_grow_one_to_two_workers(tmp_path):
    """Elastic horovodrun: 1 worker, a second joins once 2 images are trained (the change lands
    when the driver has noticed it, in either epoch)."""
    pytest.importorskip("horovod.mxnet")
    voc = recipe_data.make_voc_segmentation(str(tmp_path / "data"), num_train=6, num_val=2, size=40)
    ckpt = str(tmp_path / "ckpt")
    argv = [os.path.join(recipe_data.ROOT, "scripts", "segmentation", "train_segmentation.py")]
    argv += TINY + ["--data-dir", voc, "--local-batch-size", "1", "--checkpoint-dir", ckpt,
                    "--commit-interval", "8", "--epochs", "2"]
    code, output = recipe_data.run_horovod_elastic(str(tmp_path), argv, "0:1;2:2", np_start=1,
                                                   min_np=1, max_np=2, timeout=230)
    assert code == 0, output[-4000:]
    index = recipe.latest_checkpoint(ckpt)
    recipe_data.check_one_grow(output, index, num_train=6, local_batch_size=1, epochs=2)
