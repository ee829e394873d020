"""GluonCV 0.10's detection command lines (train_ssd.py, train_yolo3.py) against the detection
recipe: every flag and default, GluonCV's log lines and files on a tiny VOC set, resume, and the
bad-input table."""
import os

import pytest

import recipe_data
from gluon_elastic.recipe_log import parse_gluoncv_log

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402

ssd = recipe_data.load_recipe("scripts/detection/train_ssd.py")
yolo = recipe_data.load_recipe("scripts/detection/train_yolo3.py")
det = ssd.train_detection

COMMON = {"--batch-size": ("batch_size", None), "--dataset": ("dataset", "voc"),
          "-j": ("num_data_workers", 4), "--num-workers": ("num_data_workers", 4),
          "--gpus": ("gpus", "0"), "--resume": ("resume", ""), "--start-epoch": ("start_epoch", 0),
          "--lr": ("lr", 0.001), "--lr-decay": ("lr_decay", 0.1), "--momentum": ("momentum", 0.9),
          "--wd": ("wd", 0.0005), "--log-interval": ("log_interval", 100),
          "--save-prefix": ("save_prefix", ""), "--save-interval": ("save_interval", 10),
          "--val-interval": ("val_interval", 1), "--seed": ("seed", 233),
          "--syncbn": ("syncbn", False), "--amp": ("amp", False), "--horovod": ("horovod", False)}
# GluonCV 0.10's flags of each script with their defaults (destination, default).
SSD_FLAGS = dict(COMMON, **{
    "--network": ("network", "vgg16_atrous"), "--data-shape": ("data_shape", 300),
    "--dataset-root": ("dataset_root", "~/.mxnet/datasets/"), "--epochs": ("epochs", 240),
    "--lr-decay-epoch": ("lr_decay_epoch", "160,200"), "--dali": ("dali", False)})
YOLO_FLAGS = dict(COMMON, **{
    "--network": ("network", "darknet53"), "--data-shape": ("data_shape", 416),
    "--epochs": ("epochs", 200), "--lr-mode": ("lr_mode", "step"),
    "--lr-decay-period": ("lr_decay_period", 0), "--lr-decay-epoch": ("lr_decay_epoch", "160,180"),
    "--warmup-lr": ("warmup_lr", 0.0), "--warmup-epochs": ("warmup_epochs", 0),
    "--num-samples": ("num_samples", -1), "--no-random-shape": ("no_random_shape", False),
    "--no-wd": ("no_wd", False), "--mixup": ("mixup", False),
    "--no-mixup-epochs": ("no_mixup_epochs", 20), "--label-smooth": ("label_smooth", False)})


@pytest.mark.parametrize("kind, table", [("ssd", SSD_FLAGS), ("yolo3", YOLO_FLAGS)])
def test_every_gluoncv_flag_with_gluoncvs_default(kind, table):
    from gluon_elastic import gluoncv_detection

    parser = det.build_parser()
    gluoncv_detection.add_gluoncv_args(parser, kind)
    args = parser.parse_args([])
    for flag, (dest, default) in table.items():
        assert parser._option_string_actions[flag].dest == dest, flag
        if flag == "--batch-size":
            # GluonCV's per-process batch; --local-batch-size (None until resolved) follows it.
            assert args.batch_size == {"ssd": 32, "yolo3": 64}[kind]
        elif flag not in ("-j", "--num-workers"):
            assert getattr(args, dest) == default, flag
    assert args.num_data_workers == 4


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """``DATASET_ROOT/voc``: a tiny VOCdevkit (VOC2007 only), as GluonCV's --dataset-root wants."""
    root = tmp_path_factory.mktemp("datasets")
    devkit = recipe_data.make_voc_detection(str(root / "raw"), num_train=8, num_val=4, size=64)
    os.symlink(devkit, str(root / "voc"))
    return str(root)


def _tiny(dataset_root, prefix):
    # Sizes scaled down by flags; --train-splits because the tiny set has no VOC2012.
    return ["--dataset-root", dataset_root, "--train-splits", "2007_trainval", "--data-shape",
            "64", "--batch-size", "2", "-j", "0", "--log-interval", "2", "--save-prefix", prefix]


@pytest.mark.timeout(300)
def test_ssd_command_logs_like_gluoncv_saves_and_resumes(dataset_root, tmp_path):
    prefix = str(tmp_path / "out") + "/"
    argv = ["--network", "mobilenet0.25", "--epochs", "2", "--save-interval", "1"] + \
        _tiny(dataset_root, prefix)
    loop = ssd.train(ssd.parse_args(argv))
    assert (loop.trainer.iteration, loop.trainer.progress) == (8, 16)
    stem = prefix + "ssd_300_mobilenet0.25_voc"
    log = open(stem + "_train.log").read()
    assert log.startswith("Namespace(") and "Start training from [Epoch 0]" in log
    records = parse_gluoncv_log(log)
    batches = [r for r in records if r["kind"] == "batch"]
    assert [(r["epoch"], r["batch"], r["world"], r["global_batch"]) for r in batches] == \
        [(0, 1, 1, 2), (0, 3, 1, 2), (1, 1, 1, 2), (1, 3, 1, 2)]
    assert all(set(r) >= {"CrossEntropy", "SmoothL1", "lr", "speed"} for r in batches)
    training = [r for r in records if r["kind"] == "training"]
    assert [r["epoch"] for r in training] == [0, 1]
    validation = [r for r in records if r["kind"] == "validation"]
    assert [r["epoch"] for r in validation] == [0, 1]
    assert len(validation[0]) == 2 + 20 + 1 and 0 <= validation[0]["mAP"] <= 1  # VOC classes
    saved = sorted(os.listdir(tmp_path / "out"))
    assert "ssd_300_mobilenet0.25_voc_0000_%.4f.params" % validation[0]["mAP"] in saved
    epoch_1 = "ssd_300_mobilenet0.25_voc_0001_%.4f.params" % validation[1]["mAP"]
    assert epoch_1 in saved
    # --resume and --start-epoch: GluonCV's parameters, one more epoch from epoch 2.
    resumed = ssd.train(ssd.parse_args(
        ["--network", "mobilenet0.25", "--epochs", "3", "--save-interval", "0",
         "--resume", os.path.join(str(tmp_path / "out"), epoch_1), "--start-epoch", "2"]
        + _tiny(dataset_root, prefix)))
    assert [epoch for epoch, _ in resumed.history] == [2]
    assert (resumed.trainer.iteration, resumed.trainer.progress) == (12, 24)


@pytest.mark.timeout(300)
def test_yolo3_command_with_mixup_label_smoothing_and_validation_interval(dataset_root,
                                                                         tmp_path):
    prefix = str(tmp_path / "y") + "/"
    argv = ["--network", "mobilenet0.25", "--epochs", "2", "--no-random-shape", "--mixup",
            "--no-mixup-epochs", "1", "--label-smooth", "--no-wd", "--val-interval", "2",
            "--save-interval", "0", "--warmup-epochs", "1"] + _tiny(dataset_root, prefix)
    loop = yolo.train(yolo.parse_args(argv))
    assert loop.net._target_generator._label_smooth is True
    assert loop.net.collect_params(".*beta|.*gamma|.*bias") and all(
        p.wd_mult == 0.0 for p in loop.net.collect_params(".*beta|.*gamma|.*bias").values())
    records = parse_gluoncv_log(open(prefix + "yolo3_mobilenet0.25_voc_train.log").read())
    batches = [r for r in records if r["kind"] == "batch"]
    assert all(set(r) >= {"ObjLoss", "BoxCenterLoss", "BoxScaleLoss", "ClassLoss"}
               for r in batches)
    # Warmup from 0 over epoch 0 (8 images, steps of 2): LR 0, 2.5e-4, 5e-4, 7.5e-4, then 1e-3.
    assert [r["lr"] for r in batches] == [2.5e-4, 7.5e-4, 1e-3, 1e-3]
    # GluonCV validates when epoch % --val-interval == 0: epoch 0 only.
    assert [r["epoch"] for r in records if r["kind"] == "validation"] == [0]


BAD_INPUT = [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--momentum", "1"], "--momentum"),
    (["--wd", "-1"], "--wd"), (["--data-shape", "0"], "--data-shape"),
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "3", "--local-batch-size", "4"], "--local-batch-size 4 (per worker) "
                                                         "contradicts --batch-size 3"),
    (["--save-prefix", "{file}/x"], "--save-prefix"),
    (["--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["--amp"], "--amp is not supported"), (["--dali"], "--dali is not supported"),
    (["--network", "nothing"], "--network nothing"), (["--gpus", "1"], "--gpus 1"),
    (["--gpus", "a"], "--gpus"), (["--resume", "{missing}"], "--resume"),
    (["--start-epoch", "2"], "--start-epoch 2"),
    (["--horovod", "--backend", "dist_sync"], "--horovod contradicts --backend dist_sync"),
    (["--dataset-root", "{missing}"], "does not exist"),
]


@pytest.mark.parametrize("extra, named", BAD_INPUT, ids=[" ".join(e) for e, _ in BAD_INPUT])
def test_bad_input_exits_2_naming_the_flag_and_writes_nothing(dataset_root, tmp_path, capsys,
                                                              extra, named):
    if extra == ["--gpus", "1"] and mx.context.num_gpus():
        pytest.skip("a GPU is visible")
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    places = {"file": str(a_file), "missing": str(tmp_path / "missing")}
    extra = [item.format(**places) for item in extra]
    argv = ["--network", "mobilenet0.25", "--epochs", "2"] + _tiny(dataset_root, str(out) + "/") \
        + ["--checkpoint-dir", str(out / "ckpt"), "--metrics-file", str(out / "run.jsonl")] + extra
    code, err = recipe_data.exit_code(ssd, argv, capsys, train=True)
    assert code == 2, err
    assert named in err, err
    assert os.listdir(out) == []
