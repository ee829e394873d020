"""GluonCV 0.10's detection command lines (train_ssd.py, train_yolo3.py, train_faster_rcnn.py)
against the detection recipe: every flag and default, GluonCV's log lines and files on a tiny VOC
set, resume, each detector taking one step, and the bad-input table."""
import os

import numpy as np
import pytest

import recipe_data
from gluon_elastic.devices import split_and_load
from gluon_elastic.recipe_log import parse_gluoncv_log

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402

ssd = recipe_data.load_recipe("scripts/detection/train_ssd.py")
yolo = recipe_data.load_recipe("scripts/detection/train_yolo3.py")
frcnn = recipe_data.load_recipe("scripts/detection/train_faster_rcnn.py")
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
# GluonCV 0.10's train_faster_rcnn.py; --epochs, --lr, --lr-decay-epoch, --lr-warmup and --wd
# default to '' there and take their values from --dataset after parsing (FRCNN_BY_DATASET).
FRCNN_FLAGS = dict(
    {flag: entry for flag, entry in COMMON.items() if flag != "--syncbn"}, **{
        "--network": ("network", "resnet50_v1b"), "--save-interval": ("save_interval", 1),
        "--lr-warmup-factor": ("lr_warmup_factor", 1. / 3.), "--verbose": ("verbose", False),
        "--mixup": ("mixup", False), "--no-mixup-epochs": ("no_mixup_epochs", 20),
        "--norm-layer": ("norm_layer", None), "--rpn-smoothl1-rho": ("rpn_smoothl1_rho", 1. / 9.),
        "--rcnn-smoothl1-rho": ("rcnn_smoothl1_rho", 1.), "--use-fpn": ("use_fpn", False),
        "--disable-hybridization": ("disable_hybridization", False),
        "--static-alloc": ("static_alloc", False), "--executor-threads": ("executor_threads", 1),
        "--kv-store": ("kv_store", "nccl"), "--epochs": ("epochs", None), "--lr": ("lr", None),
        "--lr-decay-epoch": ("lr_decay_epoch", None), "--lr-warmup": ("lr_warmup", None),
        "--wd": ("wd", None)})
FRCNN_BY_DATASET = {"voc": (20, 0.001, "14,20", -1, 5e-4),
                    "coco": (26, 0.00125, "17,23", 1000, 1e-4)}
# The flags of its custom-model subcommand.
FRCNN_CUSTOM_FLAGS = {
    "--no-pretrained-base": ("no_pretrained_base", False),
    "--num-fpn-filters": ("num_fpn_filters", 256), "--num-box-head-conv": ("num_box_head_conv", 4),
    "--num-box-head-conv-filters": ("num_box_head_conv_filters", 256),
    "--num_box_head_dense_filters": ("num_box_head_dense_filters", 1024),
    "--image-short": ("image_short", "800"), "--image-max-size": ("image_max_size", 1333),
    "--nms-thresh": ("nms_thresh", 0.5), "--nms-topk": ("nms_topk", -1),
    "--post-nms": ("post_nms", -1), "--roi-mode": ("roi_mode", "align"),
    "--roi-size": ("roi_size", "7,7"), "--strides": ("strides", "4,8,16,32,64"),
    "--clip": ("clip", 4.14), "--rpn-channel": ("rpn_channel", 256),
    "--anchor-base-size": ("anchor_base_size", 16),
    "--anchor-aspect-ratio": ("anchor_aspect_ratio", "0.5,1,2"),
    "--anchor-scales": ("anchor_scales", "2,4,8,16,32"),
    "--anchor-alloc-size": ("anchor_alloc_size", "384,384"),
    "--rpn-nms-thresh": ("rpn_nms_thresh", 0.7),
    "--rpn-train-pre-nms": ("rpn_train_pre_nms", 12000),
    "--rpn-train-post-nms": ("rpn_train_post_nms", 2000),
    "--rpn-test-pre-nms": ("rpn_test_pre_nms", 6000),
    "--rpn-test-post-nms": ("rpn_test_post_nms", 1000), "--rpn-min-size": ("rpn_min_size", 1),
    "--rcnn-num-samples": ("rcnn_num_samples", 512),
    "--rcnn-pos-iou-thresh": ("rcnn_pos_iou_thresh", 0.5),
    "--rcnn-pos-ratio": ("rcnn_pos_ratio", 0.25), "--max-num-gt": ("max_num_gt", 100)}


def _gluoncv_parser(kind):
    from gluon_elastic import gluoncv_detection

    parser = det.build_parser()
    gluoncv_detection.add_gluoncv_args(parser, kind)
    return parser


@pytest.mark.parametrize("kind, table", [("ssd", SSD_FLAGS), ("yolo3", YOLO_FLAGS),
                                         ("faster_rcnn", FRCNN_FLAGS)])
def test_every_gluoncv_flag_with_gluoncvs_default(kind, table):
    parser = _gluoncv_parser(kind)
    args = parser.parse_args([])
    for flag, (dest, default) in table.items():
        assert parser._option_string_actions[flag].dest == dest, flag
        if flag == "--batch-size":
            # GluonCV's per-process batch: None until resolved, so that typing GluonCV's default
            # counts as given; the help states the default.
            default = {"ssd": 32, "yolo3": 64, "faster_rcnn": 1}[kind]
            assert args.batch_size is None
            assert "(default: %d)" % default in parser._option_string_actions[flag].help
            assert recipe_data.gluoncv_default(parser, args, flag, dest) == default
        elif flag not in ("-j", "--num-workers"):
            assert getattr(args, dest) == default, flag
    assert args.num_data_workers == 4
    if kind == "faster_rcnn":
        custom = parser.parse_args(["custom-model"])
        assert custom.custom_model == "custom-model" and args.custom_model is None
        for flag, (dest, default) in FRCNN_CUSTOM_FLAGS.items():
            assert getattr(custom, dest) == default, flag


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_faster_rcnn_defaults_follow_the_dataset_and_name_gluoncvs_model(dataset):
    from gluon_elastic import gluoncv_detection

    parser = _gluoncv_parser("faster_rcnn")
    args = gluoncv_detection.resolve_args(parser, parser.parse_args(["--dataset", dataset]),
                                          "faster_rcnn", det.faster_rcnn_names(), 0)
    assert (args.epochs, args.lr, args.lr_decay_epoch, args.lr_warmup, args.wd) == \
        FRCNN_BY_DATASET[dataset]
    assert (args.model, args.batch_size, args.local_batch_size, args.lr_mode) == \
        ("faster_rcnn_resnet50_v1b_" + dataset, 1, 1, "step")
    # Warmup from --lr-warmup-factor x --lr; the schedule's samples follow the starting world.
    assert args.warmup_lr == pytest.approx(args.lr / 3)
    coco = gluoncv_detection.resolve_args(parser, parser.parse_args(
        ["--dataset", "coco", "--use-fpn", "--norm-layer", "syncbn", "--network", "resnet101_v1d",
         "--gpus", "0,1", "--batch-size", "2"]), "faster_rcnn", det.faster_rcnn_names(), 2)
    assert coco.model == "faster_rcnn_fpn_syncbn_resnet101_v1d_coco"
    custom = gluoncv_detection.resolve_args(parser, parser.parse_args(
        ["--network", "resnet18_v1b", "custom-model", "--image-short", "48,64", "--roi-mode",
         "pool", "--anchor-alloc-size", "32,32", "--roi-size", "7"]), "faster_rcnn",
        det.faster_rcnn_names(), 0)
    assert (custom.model, custom.use_fpn, custom.image_short, custom.anchor_alloc_size,
            custom.roi_size, custom.strides, custom.data_shape) == \
        ("custom_faster_rcnn_fpn_resnet18_v1b_voc", True, [48, 64], [32, 32], 7,
         [4, 8, 16, 32, 64], 64)


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
    assert "The base network trains from scratch" in log
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


# GluonCV's custom-model subcommand with every size scaled down to 64-pixel images (ROI pooling:
# the CPU's ROIAlign is refused with FPN, see the bad-input table).
TINY_CUSTOM = ["custom-model", "--no-pretrained-base", "--image-short", "64", "--image-max-size",
               "64", "--num-fpn-filters", "16", "--num-box-head-conv-filters", "16",
               "--num_box_head_dense_filters", "32", "--rpn-channel", "16", "--anchor-alloc-size",
               "64,64", "--rpn-train-pre-nms", "256", "--rpn-train-post-nms", "64",
               "--rpn-test-pre-nms", "128", "--rpn-test-post-nms", "32", "--rcnn-num-samples",
               "32", "--roi-mode", "pool"]


def _tiny_frcnn(dataset_root, prefix):
    # GluonCV's Faster R-CNN script has no --dataset-root or --data-shape: the recipe's
    # --data-dir, and custom-model's sizes.
    return ["--data-dir", os.path.join(dataset_root, "voc"), "--train-splits", "2007_trainval",
            "--network", "resnet18_v1b", "--batch-size", "2", "-j", "0", "--log-interval", "2",
            "--save-prefix", prefix]


@pytest.mark.timeout(300)
def test_faster_rcnn_command_logs_like_gluoncv_warms_up_mixes_and_saves(dataset_root, tmp_path):
    prefix = str(tmp_path / "f") + "/"
    argv = _tiny_frcnn(dataset_root, prefix) + [
        "--epochs", "2", "--val-interval", "2", "--save-interval", "2", "--lr-warmup", "2",
        "--lr-warmup-factor", "0.5", "--mixup", "--no-mixup-epochs", "1", "--verbose"] + TINY_CUSTOM
    loop = frcnn.train(frcnn.parse_args(argv))
    # 8 images, batches of 2: 4 steps an epoch. Mixup (the loss counting half) in epoch 0 only.
    assert (loop.trainer.iteration, loop.trainer.progress, loop.loss_fn.mix_ratio) == (8, 16, 1.0)
    # Only GluonCV's trainable parameters take gradients: the frozen stem stays as initialised.
    params = loop.net.collect_params()
    assert params["resnetv1b_conv0_weight"].grad_req == "null"
    assert params["fasterrcnn0_dense0_weight"].grad_req != "null"
    stem = "custom_faster_rcnn_fpn_resnet18_v1b_voc"
    log = open(prefix + stem + "_train.log").read()
    assert log.startswith("Namespace(") and "Trainable parameters:" in log
    records = parse_gluoncv_log(log)
    batches = [r for r in records if r["kind"] == "batch"]
    assert [(r["epoch"], r["batch"], r["world"], r["global_batch"]) for r in batches] == \
        [(0, 1, 1, 2), (0, 3, 1, 2), (1, 1, 1, 2), (1, 3, 1, 2)]
    names = ("RPN_Conf", "RPN_SmoothL1", "RCNN_CrossEntropy", "RCNN_SmoothL1", "RPNAcc",
             "RPNL1Loss", "RCNNAcc", "RCNNL1Loss")
    assert all(set(r) >= set(names) and np.isfinite([r[n] for n in names]).all()
               for r in batches)
    # GluonCV's warmup over --lr-warmup iterations from --lr-warmup-factor x --lr: steps 0, 1, 2
    # at 5e-4, 7.5e-4, 1e-3; the lines show the LR of steps 1 and 3 of each epoch.
    assert [r["lr"] for r in batches] == [7.5e-4, 1e-3, 1e-3, 1e-3]
    assert [r["epoch"] for r in records if r["kind"] == "training"] == [0, 1]
    # Faster R-CNN's intervals count from 1: validated and saved after epoch 1 only.
    validation = [r for r in records if r["kind"] == "validation"]
    assert [r["epoch"] for r in validation] == [1] and len(validation[0]) == 2 + 20 + 1
    saved = [name for name in os.listdir(tmp_path / "f") if name.endswith(".params")]
    assert stem + "_0001_%.4f.params" % validation[0]["mAP"] in saved
    assert len(saved) == (2 if validation[0]["mAP"] > 0 else 1)   # and _best when above 0


@pytest.mark.timeout(300)
def test_each_detector_family_builds_and_takes_one_step(dataset_root, tmp_path):
    from gluon_elastic import ElasticTrainer, gluoncv_detection
    from gluon_elastic.backends import LocalBackend

    families = [(ssd, ["--network", "mobilenet0.25"] + _tiny(dataset_root, str(tmp_path) + "/")),
                (yolo, ["--network", "mobilenet0.25", "--no-random-shape"]
                 + _tiny(dataset_root, str(tmp_path) + "/")),
                (frcnn, _tiny_frcnn(dataset_root, str(tmp_path) + "/") + TINY_CUSTOM)]
    for script, argv in families:
        args = script.parse_args(argv)
        train_set, _ = det.load_data(args)
        classes = tuple(train_set.classes)
        if args.gluoncv == "faster_rcnn":
            net = gluoncv_detection.build_faster_rcnn(args, classes, [mx.cpu()])
        else:
            net = det.build_model(args, classes, [mx.cpu()])
        loss_fn = gluoncv_detection.DetectionLoss(args.gluoncv)
        make_loader = {"ssd": lambda: det.make_train_loader(args, train_set, net),
                       "yolo3": lambda: det._yolo_loader(args, train_set, net),
                       "faster_rcnn": lambda: det._faster_rcnn_loader(args, train_set, net,
                                                                      loss_fn)}[args.gluoncv]()
        # The loop hands the loss each device's part, already on the device.
        batch, = split_and_load(next(iter(make_loader([[0, 1]], 0))), [mx.cpu()])
        trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.001,
                                                               "momentum": 0.9},
                                 kvstore=LocalBackend("device"), local_batch_size=2)
        trained = {name: p.data().asnumpy() for name, p in net.collect_params().items()
                   if p.grad_req != "null"}
        with mx.autograd.record():
            loss = loss_fn(net, batch)
        loss.backward()
        trainer.step(2)
        assert loss.shape == (2,) and np.isfinite(loss.asnumpy()).all(), args.model
        moved = [name for name, p in net.collect_params().items()
                 if name in trained and not np.array_equal(p.data().asnumpy(), trained[name])]
        assert moved and trainer.iteration == 1, args.model
        assert all(np.isfinite(value) for _, value in
                   (metric.get() for metric in loss_fn.metrics)), args.model


BAD_INPUT = [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--momentum", "1"], "--momentum"),
    (["--wd", "-1"], "--wd"), (["--data-shape", "0"], "--data-shape"),
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "3", "--local-batch-size", "4"], "--local-batch-size 4 (per worker) "
                                                         "contradicts --batch-size 3"),
    # GluonCV's default typed out is given too.
    (["--batch-size", "32", "--local-batch-size", "8"], "--local-batch-size 8 (per worker) "
                                                          "contradicts --batch-size 32"),
    (["--save-prefix", "{file}/x"], "--save-prefix"),
    (["--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["--amp"], "--amp is not supported"), (["--dali"], "--dali is not supported"),
    (["--network", "nothing"], "--network nothing"), (["--gpus", "1"], "--gpus 1"),
    (["--gpus", "a"], "--gpus"), (["--resume", "{missing}"], "--resume"),
    (["--start-epoch", "2"], "--start-epoch 2"),
    (["--horovod", "--backend", "dist_sync"], "--horovod contradicts --backend dist_sync"),
    (["--dataset-root", "{missing}"], "does not exist"),
    (["--syncbn", "--gpus", "", "--num-gpus", "2"], "--syncbn over 2 CPU contexts"),
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


# (flags, custom-model flags after the tiny ones, message); the command is the tiny custom
# model's, unless the flags name a zoo model (--network resnet50_v1b: no custom-model).
FRCNN_BAD_INPUT = [
    (["--batch-size", "1", "--local-batch-size", "2"], [], "--local-batch-size 2 (per worker) "
                                                             "contradicts --batch-size 1"),
    (["--lr", "-1"], [], "--lr"), (["--epochs", "0"], [], "--epochs"),
    (["--wd", "nan"], [], "--wd"),
    (["--network", "vgg16"], [], "--network"), (["--amp"], [], "--amp is not supported"),
    (["--network", "resnet50_v1b", "--use-fpn"], None, "has no faster_rcnn_fpn_resnet50_v1b_voc"),
    (["--data-shape", "64"], [], "--data-shape"), (["--kv-store", "dist_async"], [], "--kv-store"),
    (["--batch-policy", "fixed_global", "--global-batch-size", "2"], [], "--batch-policy"),
    (["--start-epoch", "20"], [], "--start-epoch 20"),
    ([], ["--image-short", "6x"], "--image-short"),
    # FPN pooling with ROIAlign, the custom model's default, on the CPU.
    ([], ["--roi-mode", "align"], "ROIAlign on the CPU"),
]


@pytest.mark.parametrize("extra, custom, named", FRCNN_BAD_INPUT,
                         ids=[" ".join(e + (c or [])) for e, c, _ in FRCNN_BAD_INPUT])
def test_faster_rcnn_bad_input_exits_2_naming_the_flag_and_writes_nothing(
        dataset_root, tmp_path, capsys, extra, custom, named):
    if named == "ROIAlign on the CPU" and mx.context.num_gpus():
        pytest.skip("a GPU is visible")
    out = tmp_path / "out"
    out.mkdir()
    argv = _tiny_frcnn(dataset_root, str(out) + "/") + ["--checkpoint-dir", str(out / "ckpt")]
    if "--batch-size" in extra:   # the table's own --batch-size replaces the tiny one
        position = argv.index("--batch-size")
        del argv[position:position + 2]
    argv += extra + ([] if custom is None else TINY_CUSTOM + custom)
    code, err = recipe_data.exit_code(frcnn, argv, capsys, train=True)
    assert code == 2, err
    assert named in err, err
    assert os.listdir(out) == []
