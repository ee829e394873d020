"""Every recipe family with 2 devices per process (``--device cpu --num-gpus 2``: cpu(0) and cpu(1),
distinct MXNet contexts), on the tiny on-disk data sets of the other recipe tests.

Classification is exact: one process splitting each batch of 4 over 2 devices computes what 2
emulated workers of 2 images on one device compute (per-device BatchNorm statistics are the
per-worker ones, gradients add up the same way, device 0's running statistics are the ones kept
as virtual worker 0's are), so the weights and metrics agree. Segmentation (dropout in GluonCV's
heads) and detection (GluonCV's random augmentation is not seeded) are random per run: there
the samples seen, the identical weights on both devices, and the split evaluation against the
same weights evaluated on one device are asserted.
"""
import numpy as np
import pytest

import recipe_data

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402

DEVICES = [mx.cpu(0), mx.cpu(1)]


def weights_per_device(net):
    """``{name: [copy on each device]}`` as numpy arrays."""
    return {name: [data.asnumpy() for data in param.list_data()]
            for name, param in net.collect_params().items()}


def assert_same_on_every_device(net):
    """Every parameter (BatchNorm statistics included) holds one value on both devices."""
    for param in net.collect_params().values():
        first, second = (data.asnumpy() for data in param.list_data())
        np.testing.assert_array_equal(first, second, err_msg=param.name)
        assert param.list_ctx() == DEVICES


def test_classification_two_devices_equal_two_emulated_workers(tmp_path):
    cls = recipe_data.load_recipe("scripts/classification/train_imagenet.py")
    rec_dir = recipe_data.make_imagenet_rec(str(tmp_path), num_train=16, num_val=8, classes=4,
                                            size=40)
    argv = ["--model", "resnet18_v1b", "--classes", "4", "--input-size", "32",
            "--num-data-workers", "0", "--log-interval", "0", "--warmup-epochs", "0.5",
            "--lr", "0.05", "--seed", "3", "--mode", "hybrid", "--save-frequency", "0",
            "--logging-file", "", "--epochs", "1", "--device", "cpu", "--batch-size", "2",
            "--use-rec", "--rec-reader", "index",
            "--rec-train", rec_dir + "/train.rec", "--rec-train-idx", rec_dir + "/train.idx",
            "--rec-val", rec_dir + "/val.rec", "--rec-val-idx", rec_dir + "/val.idx"]
    # GluonCV's --batch-size is per device: 2 x 2 devices is the process's batch of 4.
    devices = cls.train(cls.parse_args(argv + ["--num-gpus", "2"]))
    emulated = cls.train(cls.parse_args(argv + ["--emulate-schedule", "0:2"]))
    for loop in (devices, emulated):
        assert (loop.trainer.global_batch_size, loop.trainer.iteration,
                loop.trainer.progress) == (4, 4, 16)
    assert devices.trainer.world_size == 1 and emulated.trainer.world_size == 2
    assert_same_on_every_device(devices.net)
    expected = weights_per_device(emulated.net)
    for name, copies in weights_per_device(devices.net).items():
        np.testing.assert_allclose(copies[0], expected[name][0], rtol=1e-6, atol=1e-6,
                                   err_msg=name)
    assert devices.history == emulated.history


def test_segmentation_two_devices(tmp_path):
    seg = recipe_data.load_recipe("scripts/segmentation/train_segmentation.py")
    voc_dir = recipe_data.make_voc_segmentation(str(tmp_path), num_train=4, num_val=2, size=40)
    args = seg.parse_args(["--base-size", "40", "--crop-size", "24", "--num-data-workers", "0",
                           "--log-interval", "0", "--local-batch-size", "2", "--epochs", "1",
                           "--seed", "2", "--data-dir", voc_dir, "--device", "cpu",
                           "--num-gpus", "2"])
    loop = seg.train(args)
    assert (loop.trainer.world_size, loop.trainer.iteration, loop.trainer.progress) == (1, 2, 4)
    assert_same_on_every_device(loop.net)
    _, val_set = seg.load_data(args)
    indices = np.arange(len(val_set))
    split = seg.make_evaluate_fn(args, val_set, DEVICES, batch_size=2)(loop.net, indices)
    single = seg.make_evaluate_fn(args, val_set, [mx.cpu(0)], batch_size=2)(loop.net, indices)
    assert split[:2] == single[:2] and split[1] == 2 * 24 * 24 - _ignored(val_set)
    np.testing.assert_array_equal(split[2], single[2])
    np.testing.assert_array_equal(split[3], single[3])


def test_segmentation_syncbn_builds_synchronised_batchnorm_for_the_process_devices(tmp_path):
    # GluonCV's --syncbn: every BatchNorm of the model becomes a SyncBatchNorm over the devices
    # of the process (built for 4 GPUs here without placing it: this machine has none).
    seg = recipe_data.load_recipe("scripts/segmentation/train.py")
    voc_dir = recipe_data.make_voc_segmentation(str(tmp_path), num_train=4, num_val=2, size=40)
    args = seg.parse_args(["--model", "fcn", "--dataset", "pascal_voc", "--data-dir", voc_dir,
                           "--no-cuda", "--crop-size", "24", "--syncbn",
                           "--save-dir", str(tmp_path / "runs")])
    from gluoncv.model_zoo.segbase import get_segmentation_model

    kwargs = seg.train_segmentation._norm_layer(args, [mx.gpu(i) for i in range(4)])
    net = get_segmentation_model(model="fcn", dataset="pascal_voc", backbone="resnet50",
                                 pretrained_base=False, crop_size=24, **kwargs)
    norms = list({id(b): b for b in _blocks(net) if "BatchNorm" in type(b).__name__}.values())
    assert len(norms) > 50 and {(type(b).__name__, b._kwargs["ndev"]) for b in norms} == {
        ("SyncBatchNorm", 4)}
    # One barrier per layer: the keys that pair the devices' calls are distinct.
    assert len({b._kwargs["key"] for b in norms}) == len(norms)


def _blocks(block):
    """``block`` and every block under it."""
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def _ignored(val_set):
    """Pixels of the validation masks that do not count (void, -1)."""
    return sum(int((val_set[i][1].asnumpy() < 0).sum()) for i in range(len(val_set)))


@pytest.mark.parametrize("model", ["ssd_300_mobilenet0.25_voc", "yolo3_mobilenet0.25_voc"])
def test_detection_two_devices(tmp_path, model):
    det = recipe_data.load_recipe("scripts/detection/train_detection.py")
    voc_dir = recipe_data.make_voc_detection(str(tmp_path), num_train=8, num_val=4, size=64)
    args = det.parse_args(["--data-shape", "64", "--num-data-workers", "0", "--log-interval", "0",
                           "--local-batch-size", "4", "--epochs", "1", "--seed", "1",
                           "--data-dir", voc_dir, "--train-splits", "2007_trainval",
                           "--model", model, "--device", "cpu", "--num-gpus", "2"])
    loop = det.train(args)
    assert (loop.trainer.world_size, loop.trainer.iteration, loop.trainer.progress) == (1, 2, 8)
    assert_same_on_every_device(loop.net)
    _, val_set = det.load_data(args)
    indices = np.arange(len(val_set))
    split = det.make_evaluate_fn(args, val_set, DEVICES, batch_size=4)(loop.net, indices)
    single = det.make_evaluate_fn(args, val_set, [mx.cpu(0)], batch_size=4)(loop.net, indices)
    # One record per device part (2 + 2 images) against one record of 4 images.
    assert [len(record[0]) for record in split] == [2, 2] and len(single[0][0]) == 4
    for column in range(5):
        joined = np.concatenate([record[column] for record in split])
        np.testing.assert_allclose(joined, single[0][column], rtol=1e-5, atol=1e-5)


def test_gluoncv_device_flags_give_the_devices_per_process(capsys):
    """Detection's --gpus ids and segmentation's --ngpus count the GPUs of each process (the
    local-rank rule places them); a contradicting --num-gpus, and a Faster R-CNN batch that does
    not split evenly over the devices, exit 2. A host of 4 GPUs is given to the checks."""
    from gluon_elastic import gluoncv_detection, gluoncv_segmentation

    det = recipe_data.load_recipe("scripts/detection/train_detection.py")
    seg = recipe_data.load_recipe("scripts/segmentation/train_segmentation.py")

    def detection(kind, argv):
        parser = det.build_parser()
        gluoncv_detection.add_gluoncv_args(parser, kind)
        names = det.faster_rcnn_names() if kind == "faster_rcnn" else det.model_names()
        return gluoncv_detection.resolve_args(parser, parser.parse_args(argv), kind, names, 4)

    def segmentation(argv):
        parser = seg.build_parser()
        parser._option_string_actions["--dataset"].choices = None  # pylint: disable=protected-access
        gluoncv_segmentation.add_gluoncv_args(parser)
        return gluoncv_segmentation.resolve_args(parser, parser.parse_args(argv), 4)

    assert detection("ssd", ["--gpus", "0,1,2"]).num_gpus == 3
    assert detection("ssd", ["--gpus", ""]).num_gpus == 0          # the CPU, one context
    assert detection("faster_rcnn", ["--gpus", "0,1", "--batch-size", "4"]).num_gpus == 2
    assert segmentation(["--ngpus", "2"]).num_gpus == 2
    assert segmentation([]).num_gpus == 4                            # all of the host's
    for run, argv, message in (
            (lambda argv: detection("ssd", argv), ["--gpus", "0,1", "--num-gpus", "3"],
             "--num-gpus 3 contradicts --gpus 0,1 (2 GPUs per process)"),
            (lambda argv: detection("faster_rcnn", argv), ["--gpus", "0,1", "--batch-size", "3"],
             "Faster R-CNN splits the per-worker batch evenly over the devices: batch 3 on 2"),
            (segmentation, ["--ngpus", "2", "--num-gpus", "1"],
             "--num-gpus 1 contradicts --ngpus 2")):
        with pytest.raises(SystemExit) as info:
            run(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
