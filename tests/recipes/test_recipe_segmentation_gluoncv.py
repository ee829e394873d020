"""GluonCV 0.10's segmentation command line (train.py) against the segmentation recipe: every
flag and default, PSPNet training with GluonCV's log lines and files, --eval of the saved file,
and the bad-input table."""
import os

import pytest

import recipe_data
from gluon_elastic.recipe_log import parse_gluoncv_log

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402

seg = recipe_data.load_recipe("scripts/segmentation/train.py")

# GluonCV 0.10's scripts/segmentation/train.py: flag -> (destination, default).
GLUONCV_FLAGS = {
    "--model": ("model", "fcn"), "--model-zoo": ("model_zoo", None),
    "--pretrained": ("pretrained", False), "--backbone": ("backbone", "resnet50"),
    "--dataset": ("dataset", "pascal"), "--workers": ("num_data_workers", 16),
    "--base-size": ("base_size", 520), "--crop-size": ("crop_size", 480),
    "--train-split": ("train_split", "train"), "--aux": ("aux", False),
    "--aux-weight": ("aux_weight", 0.5), "--epochs": ("epochs", 50),
    "--start_epoch": ("start_epoch", 0), "--batch-size": ("batch_size", 16),
    "--test-batch-size": ("test_batch_size", 16), "--optimizer": ("optimizer", "sgd"),
    "--lr": ("lr", 0.001), "--warmup-epochs": ("warmup_epochs", 0),
    "--momentum": ("momentum", 0.9), "--weight-decay": ("wd", 0.0001),
    "--no-wd": ("no_wd", False), "--mode": ("mode", None), "--no-cuda": ("no_cuda", False),
    "--ngpus": ("ngpus", None), "--kvstore": ("kvstore", None), "--dtype": ("dtype", "float32"),
    "--resume": ("resume", None), "--checkname": ("checkname", "default"),
    "--save-dir": ("save_dir", None), "--log-interval": ("log_interval", 20),
    "--logging-file": ("logging_file", "train.log"), "--eval": ("eval", False),
    "--no-val": ("no_val", False), "--syncbn": ("syncbn", False),
}


def test_every_gluoncv_flag_with_gluoncvs_default():
    from gluon_elastic import gluoncv_segmentation

    parser = seg.train_segmentation.build_parser()
    parser._option_string_actions["--dataset"].choices = None
    gluoncv_segmentation.add_gluoncv_args(parser)
    args = parser.parse_args([])
    for flag, (dest, default) in GLUONCV_FLAGS.items():
        assert parser._option_string_actions[flag].dest == dest, flag
        assert recipe_data.gluoncv_default(parser, args, flag, dest) == default, flag
    # GluonCV's --ngpus defaults to every visible GPU; the LR schedule is its poly (power 0.9)
    # after a warmup from 0.
    assert (args.lr_mode, args.lr_power, args.warmup_lr) == ("poly", 0.9, 0.0)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return recipe_data.make_voc_segmentation(str(tmp_path_factory.mktemp("vocseg")), num_train=6,
                                             num_val=4, size=64)


def _tiny(voc_root, save_dir):
    return ["--dataset", "pascal_voc", "--data-dir", voc_root, "--base-size", "64",
            "--crop-size", "48", "--batch-size", "2", "--test-batch-size", "2", "--workers", "0",
            "--log-interval", "1", "--no-cuda", "--save-dir", save_dir]


@pytest.mark.timeout(300)
def test_pspnet_command_logs_like_gluoncv_saves_and_evaluates(voc_root, tmp_path):
    save_dir = str(tmp_path / "runs")
    argv = ["--model", "psp", "--backbone", "resnet50", "--aux", "--mode", "hybrid",
            "--epochs", "1"] + _tiny(voc_root, save_dir)
    loop = seg.train(seg.parse_args(argv))
    assert (loop.trainer.iteration, loop.trainer.progress) == (3, 6)
    log = open(os.path.join(save_dir, "train.log")).read()
    assert log.startswith("Namespace(") and "Starting Epoch: 0\nTotal Epochs: 1\n" in log
    assert "The backbone trains from scratch (GluonCV's script starts it from pretrained" in log
    records = parse_gluoncv_log(log)
    batches = [r for r in records if r["kind"] == "batch"]
    assert [(r["epoch"], r["batch"], r["batches"], r["world"], r["global_batch"])
            for r in batches] == [(0, i, 3, 1, 2) for i in range(3)]
    # GluonCV's poly schedule (power 0.9) over 6 samples: the LR of each step.
    assert [r["lr"] for r in batches] == pytest.approx(
        [0.001 * (1 - p / 6) ** 0.9 for p in (0, 2, 4)], abs=1e-6)
    (validation,) = [r for r in records if r["kind"] == "validation"]
    assert validation["epoch"] == 0 and 0 <= validation["mIoU"] <= validation["pixAcc"] <= 1
    saved = "epoch_0000_mIoU_%2.4f.params" % loop.history[0][1]["mIoU"]
    assert saved in os.listdir(save_dir)
    # --eval of the saved file gives the same metrics as the end of training.
    metrics = seg.train(seg.parse_args(
        ["--model", "psp", "--backbone", "resnet50", "--aux", "--mode", "hybrid", "--eval",
         "--resume", os.path.join(save_dir, saved)] + _tiny(voc_root, str(tmp_path / "eval"))))
    assert metrics == pytest.approx(loop.history[0][1], abs=1e-12)


@pytest.mark.timeout(300)
def test_deeplabv3_from_the_zoo_name_builds_and_trains(voc_root, tmp_path):
    # FCN and PSPNet train in the tests above and in test_recipe_segmentation.py; DeepLabV3 by
    # its zoo name: model and backbone from the name, the data from --dataset.
    save_dir = str(tmp_path / "runs")
    # With --syncbn on one device (GluonCV's command line on one GPU, here the CPU).
    args = seg.parse_args(["--model-zoo", "deeplab_resnet50_voc", "--epochs", "1", "--no-val",
                           "--syncbn"] + _tiny(voc_root, save_dir))
    assert (args.model, args.backbone, args.dataset, args.model_name) == (
        "deeplab", "resnet50", "voc", "deeplab_resnet50_voc")
    loop = seg.train(args)
    assert (loop.trainer.iteration, loop.trainer.progress) == (3, 6)
    assert type(loop.net).__name__ == "DeepLabV3"
    norms = [b for b in loop.net.collect_params().values() if b.name.endswith("running_var")]
    assert norms and all("syncbatchnorm" in b.name for b in norms)
    batches = [r for r in parse_gluoncv_log(open(os.path.join(save_dir, "train.log")).read())
               if r["kind"] == "batch"]
    assert len(batches) == 3 and all(0 < r["loss"] < 100 for r in batches)


BAD_INPUT = [
    (["--lr", "nan"], "--lr"), (["--momentum", "-1"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--crop-size", "44"], "--crop-size 44"),
    (["--batch-size", "3", "--local-batch-size", "4"], "--local-batch-size 4 (per worker) "
                                                         "contradicts --batch-size 3"),
    # GluonCV's default typed out is given too.
    (["--batch-size", "16", "--local-batch-size", "8"], "--local-batch-size 8 (per worker) "
                                                          "contradicts --batch-size 16"),
    (["--model", "icnet"], "--model icnet"), (["--backbone", "resnest50"], "--backbone"),
    (["--dataset", "citys"], "--dataset citys"),
    (["--model-zoo", "fcn_resnet50_ade"], "contradicts --dataset pascal_voc"),
    (["--syncbn", "--num-gpus", "2"], "--syncbn over 2 CPU contexts: MXNet's SyncBatchNorm "
                                      "deadlocks"), (["--pretrained"], "--pretrained needs"),
    (["--save-dir", "{file}"], "--save-dir"), (["--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["--resume", "{missing}"], "--resume"), (["--eval"], "--eval evaluates --resume"),
    (["--start_epoch", "5", "--epochs", "5"], "--start_epoch 5"),
    (["--kvstore", "dist_sync", "--backend", "horovod"], "--kvstore dist_sync contradicts"),
    (["--dtype", "float16"], "--dtype float16 needs a GPU"),
    (["--data-dir", "{missing}"], "does not exist"),
]


@pytest.mark.parametrize("extra, named", BAD_INPUT, ids=[" ".join(e) for e, _ in BAD_INPUT])
def test_bad_input_exits_2_naming_the_flag_and_writes_nothing(voc_root, tmp_path, capsys, extra,
                                                              named):
    if extra == ["--dtype", "float16"] and mx.context.num_gpus():
        pytest.skip("a GPU is visible")
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    places = {"file": str(a_file), "missing": str(tmp_path / "missing")}
    extra = [item.format(**places) for item in extra]
    argv = ["--model", "fcn", "--epochs", "2"] + _tiny(voc_root, str(out / "runs")) + \
        ["--checkpoint-dir", str(out / "ckpt"), "--metrics-file", str(out / "run.jsonl")] + extra
    code, err = recipe_data.exit_code(seg, argv, capsys, train=True)
    assert code == 2, err
    assert named in err, err
    assert os.listdir(out) == []
