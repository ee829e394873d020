"""GluonCV 0.10 command lines against the ImageNet recipe: every flag and default, the published
ResNet-50 v1b command on tiny RecordIO files, the bad-input table, resume from files of
gluon.Trainer, the model families, GluonCV's augmentation, ImageRecordIter's elastic parts and
corrupt records."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import recipe_data
from gluon_elastic.recipe_log import parse_gluoncv_log

pytest.importorskip("gluoncv")
import mxnet as mx  # noqa: E402
from mxnet import gluon  # noqa: E402

cls = recipe_data.load_recipe("scripts/classification/train_imagenet.py")
SCRIPT = os.path.join(recipe_data.ROOT, "scripts", "classification", "train_imagenet.py")
IMAGENET = os.path.join("~", ".mxnet", "datasets", "imagenet")

# Every flag of GluonCV 0.10's scripts/classification/imagenet/train_imagenet.py: destination
# and GluonCV's default (--model is required there and here).
GLUONCV_DEFAULTS = {
    "--data-dir": ("data_dir", IMAGENET),
    "--rec-train": ("rec_train", IMAGENET + "/rec/train.rec"),
    "--rec-train-idx": ("rec_train_idx", IMAGENET + "/rec/train.idx"),
    "--rec-val": ("rec_val", IMAGENET + "/rec/val.rec"),
    "--rec-val-idx": ("rec_val_idx", IMAGENET + "/rec/val.idx"),
    "--use-rec": ("use_rec", False),
    "--batch-size": ("batch_size", 32),
    "--dtype": ("dtype", "float32"),
    "--num-gpus": ("num_gpus", 0),
    "-j": ("num_data_workers", 4),
    "--num-data-workers": ("num_data_workers", 4),
    "--num-epochs": ("epochs", 3),
    "--lr": ("lr", 0.1),
    "--momentum": ("momentum", 0.9),
    "--wd": ("wd", 0.0001),
    "--lr-mode": ("lr_mode", "step"),
    "--lr-decay": ("lr_decay", 0.1),
    "--lr-decay-period": ("lr_decay_period", 0),
    "--lr-decay-epoch": ("lr_decay_epoch", "40,60"),
    "--warmup-lr": ("warmup_lr", 0.0),
    "--warmup-epochs": ("warmup_epochs", 0),
    "--last-gamma": ("last_gamma", False),
    "--mode": ("mode", None),
    "--input-size": ("input_size", 224),
    "--crop-ratio": ("crop_ratio", 0.875),
    "--use-pretrained": ("use_pretrained", False),
    "--use_se": ("use_se", False),
    "--mixup": ("mixup", False),
    "--mixup-alpha": ("mixup_alpha", 0.2),
    "--mixup-off-epoch": ("mixup_off_epoch", 0),
    "--label-smoothing": ("label_smoothing", 0.0),   # GluonCV: a switch, off by default
    "--no-wd": ("no_wd", False),
    "--teacher": ("teacher", None),
    "--temperature": ("temperature", 20),
    "--hard-weight": ("hard_weight", 0.5),
    "--batch-norm": ("batch_norm", False),
    "--save-frequency": ("save_frequency", 10),
    "--save-dir": ("save_dir", "params"),
    "--resume-epoch": ("resume_epoch", 0),
    "--resume-params": ("resume_params", ""),
    "--resume-states": ("resume_states", ""),
    "--log-interval": ("log_interval", 50),
    "--logging-file": ("logging_file", "train_imagenet.log"),
    "--use-gn": ("use_gn", False),
}

SMALL = ["--input-size", "32", "--classes", "4", "-j", "0", "--log-interval", "1",
         "--save-frequency", "0", "--logging-file", "", "--seed", "1"]


def rec_flags(rec_dir, reader="index", train="train", val="val"):
    return ["--use-rec", "--rec-reader", reader,
            "--rec-train", os.path.join(rec_dir, train + ".rec"),
            "--rec-train-idx", os.path.join(rec_dir, train + ".idx"),
            "--rec-val", os.path.join(rec_dir, val + ".rec"),
            "--rec-val-idx", os.path.join(rec_dir, val + ".idx")]


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    return recipe_data.make_imagenet_rec(str(tmp_path_factory.mktemp("imagenet")), num_train=16,
                                         num_val=8, classes=4, size=40)


def test_every_gluoncv_flag_with_gluoncvs_default():
    parser = cls.build_parser()
    known = set(parser._option_string_actions)
    assert set(GLUONCV_DEFAULTS) - known == set()
    args = parser.parse_args(["--model", "resnet50_v1b"])
    for flag, (dest, default) in GLUONCV_DEFAULTS.items():
        assert parser._option_string_actions[flag].dest == dest, flag
        assert recipe_data.gluoncv_default(parser, args, flag, dest) == default, flag
    # GluonCV's --label-smoothing is a switch with eta 0.1; a value is accepted too.
    assert parser.parse_args(["--model", "x", "--label-smoothing"]).label_smoothing == 0.1
    assert parser.parse_args(["--model", "x", "--label-smoothing", "0.2"]).label_smoothing == 0.2
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2


def test_batch_size_rule(rec_dir, capsys):
    base = ["--model", "resnet18_v1b"] + SMALL + rec_flags(rec_dir)
    assert cls.parse_args(base).local_batch_size == 32                      # GluonCV's default
    assert cls.parse_args(base + ["--batch-size", "4"]).local_batch_size == 4
    assert cls.parse_args(base + ["--local-batch-size", "6"]).local_batch_size == 6
    assert cls.parse_args(base + ["--batch-size", "3", "--local-batch-size", "3"]
                          ).local_batch_size == 3


def _cwd_run(argv, cwd, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=recipe_data.ROOT)
    return subprocess.run([sys.executable, SCRIPT] + argv, cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(420)
def test_published_resnet50_v1b_command_runs_unchanged(rec_dir, tmp_path):
    """GluonCV's published ResNet-50 v1b command (model zoo training script), with the data paths
    pointed at tiny RecordIO files and only sizes changed: epochs, batch, GPUs, data workers,
    warmup length and input size; plus the elastic flags."""
    published = [
        "--rec-train", "/media/ramdisk/rec/train.rec",
        "--rec-train-idx", "/media/ramdisk/rec/train.idx",
        "--rec-val", "/media/ramdisk/rec/val.rec", "--rec-val-idx", "/media/ramdisk/rec/val.idx",
        "--model", "resnet50_v1b", "--mode", "hybrid",
        "--lr", "0.4", "--lr-mode", "cosine", "--num-epochs", "120", "--batch-size", "128",
        "--num-gpus", "8", "-j", "60", "--warmup-epochs", "5", "--use-rec", "--last-gamma",
        "--no-wd", "--label-smoothing", "--save-dir", "params_resnet50_v1b"]
    sizes = {"--num-epochs": "2", "--batch-size": "4", "--num-gpus": "0", "-j": "1",
             "--warmup-epochs": "1"}
    argv = list(published)
    for position, item in enumerate(argv[:-1]):
        if item in sizes:
            argv[position + 1] = sizes[item]
        elif argv[position + 1].startswith("/media/ramdisk/rec/"):
            argv[position + 1] = os.path.join(rec_dir, os.path.basename(argv[position + 1]))
    argv += ["--input-size", "32", "--log-interval", "1", "--backend", "device",
             "--ramp-per-k", "8"]
    result = _cwd_run(argv, str(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:]
    log = open(tmp_path / "train_imagenet.log").read()   # GluonCV's default --logging-file
    assert log.splitlines()[0].startswith("Namespace(") and "model='resnet50_v1b'" in log
    records = parse_gluoncv_log(log)
    batches = [r for r in records if r["kind"] == "batch"]
    assert [(r["epoch"], r["batch"], r["world"], r["global_batch"]) for r in batches] == \
        [(epoch, batch, 1, 4) for epoch in (0, 1) for batch in range(4)]
    # Warmup from 0 over epoch 0 (16 samples), then cosine from 0.4 to 0 over epoch 1.
    expected_lr = [0.4 * p / 16 for p in (0, 4, 8, 12)] + \
        [0.4 * (1 + np.cos(np.pi * p / 16)) / 2 for p in (0, 4, 8, 12)]
    assert [r["lr"] for r in batches] == pytest.approx(expected_lr, abs=1e-6)
    assert all(0 <= r["accuracy"] <= 1 for r in batches)
    validation = [r for r in records if r["kind"] == "validation"]
    assert [r["epoch"] for r in validation] == [0, 1]
    assert all(r["err-top1"] in {k / 8 for k in range(9)} for r in validation)
    training = [r for r in records if r["kind"] == "training"]
    assert [(r["epoch"], r["world"], r["global_batch"]) for r in training] == [(0, 1, 4), (1, 1, 4)]
    saved = sorted(os.listdir(tmp_path / "params_resnet50_v1b"))
    assert "imagenet-resnet50_v1b-1.params" in saved and "imagenet-resnet50_v1b-1.states" in saved
    best = [name for name in saved if name.endswith("-best.params")]
    assert best and best[0].endswith("-imagenet-resnet50_v1b-0-best.params")
    # GluonCV's own trainer reads the states file written here.
    net = cls.build_model(cls.parse_args(["--model", "resnet50_v1b", "--classes", "1000",
                                          "--input-size", "32", "--last-gamma"]
                                         + rec_flags(rec_dir)), [mx.cpu()])
    net.load_parameters(str(tmp_path / "params_resnet50_v1b" / "imagenet-resnet50_v1b-1.params"))
    trainer = gluon.Trainer(net.collect_params(), "nag", {"momentum": 0.9})
    trainer.load_states(str(tmp_path / "params_resnet50_v1b" / "imagenet-resnet50_v1b-1.states"))
    assert trainer._optimizer.num_update == 8


# ------------------------------------------------------------------------------ bad input
def _shifted_index(rec_dir, out_dir):
    """An index of train.rec with every offset one byte off: the pair does not match."""
    path = os.path.join(out_dir, "shifted.idx")
    with open(os.path.join(rec_dir, "train.idx")) as fin, open(path, "w") as fout:
        for line in fin:
            key, offset = line.split()
            fout.write("%s\t%d\n" % (key, int(offset) + 1))
    return path


BAD_INPUT = [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-0.1"], "--lr"),
    (["--momentum", "-1"], "--momentum"), (["--momentum", "1"], "--momentum"),
    (["--wd", "-1"], "--wd"),
    (["--label-smoothing", "2"], "--label-smoothing"),
    (["--label-smoothing", "-0.1"], "--label-smoothing"),
    (["--classes", "2"], "--classes 2 disagrees with"),
    (["--crop-ratio", "0"], "--crop-ratio"), (["--crop-ratio", "1.5"], "--crop-ratio"),
    (["--input-size", "0"], "--input-size"), (["--num-epochs", "0"], "--num-epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "3", "--local-batch-size", "4"], "--local-batch-size 4 (per worker) "
                                                         "contradicts --batch-size 3"),
    # GluonCV's default typed out is given too.
    (["--batch-size", "32", "--local-batch-size", "8"], "--local-batch-size 8 (per worker) "
                                                          "contradicts --batch-size 32"),
    (["--save-dir", "{file}"], "--save-dir"), (["--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["--save-dir", "{file}/params"], "--save-dir"),
    (["--logging-file", "{dir}"], "--logging-file"),
    (["--rec-train-idx", "{missing}"], "--rec-train-idx"),
    (["--rec-val", "{missing}"], "--rec-val"),
    (["--rec-train-idx", "{shifted}"], "--rec-train/--rec-train-idx"),
    (["--use-pretrained"], "--use-pretrained needs"),
    (["--teacher", "resnet50_v1b"], "--teacher needs"),
    (["--resume-params", "{missing}"], "--resume-params"),
    (["--resume-states", "{file}"], "--resume-states"),
    (["--resume-epoch", "3"], "--resume-epoch 3"),
    (["--mode", "fast"], "--mode"),
    (["--model", "mobilenet0.25", "--last-gamma"], "--last-gamma does not apply"),
]


@pytest.mark.parametrize("extra, named", BAD_INPUT, ids=[" ".join(e) for e, _ in BAD_INPUT])
def test_bad_input_exits_2_naming_the_flag_and_writes_nothing(rec_dir, tmp_path, capsys, extra,
                                                              named):
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    places = {"file": str(a_file), "dir": str(tmp_path), "missing": str(tmp_path / "missing"),
              "shifted": _shifted_index(rec_dir, str(tmp_path))}
    extra = [item.format(**places) for item in extra]
    argv = (["--model", "resnet18_v1b", "--input-size", "32", "--classes", "4", "-j", "0"]
            + rec_flags(rec_dir) +
            ["--num-epochs", "2", "--batch-size", "4", "--save-dir", str(out / "params"),
             "--checkpoint-dir", str(out / "ckpt"), "--logging-file", str(out / "train.log"),
             "--metrics-file", str(out / "run.jsonl")] + extra)
    code, err = recipe_data.exit_code(cls, argv, capsys, train=True)
    assert code == 2, err
    assert named in err, err
    assert os.listdir(out) == []


# ------------------------------------------------------------------------------- resume
@pytest.mark.timeout(300)
def test_resume_from_files_of_gluon_trainer(rec_dir, tmp_path):
    """GluonCV's trainer code writes .params and .states after epoch 0; the recipe resumes at
    epoch 1 with those weights, that momentum and those counters, at iteration 4, progress 16."""
    args = cls.parse_args(["--model", "resnet18_v1b"] + SMALL + rec_flags(rec_dir)
                          + ["--batch-size", "4", "--num-epochs", "2", "--mode", "hybrid"])
    net = cls.build_model(args, [mx.cpu()])
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.1, "momentum": 0.9,
                                                         "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    for _ in range(2):
        data = mx.nd.array(rng.normal(size=(4, 3, 32, 32)))
        label = mx.nd.array(rng.randint(4, size=4))
        with mx.autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(4)
    params_file, states_file = str(tmp_path / "gcv-0.params"), str(tmp_path / "gcv-0.states")
    net.save_parameters(params_file)
    trainer.save_states(states_file)
    saved_momentum = {i: s.asnumpy() for i, s in trainer._updaters[0].states.items()}

    resume = ["--resume-epoch", "1", "--resume-params", params_file, "--resume-states", states_file]
    args = cls.parse_args(["--model", "resnet18_v1b"] + SMALL + rec_flags(rec_dir)
                          + ["--batch-size", "4", "--num-epochs", "2", "--mode", "hybrid"] + resume)
    # The weights are the file's, bit for bit.
    resumed_net = cls.build_model(args, [mx.cpu()])
    resumed_params = resumed_net._collect_params_with_prefix()
    for name, value in mx.nd.load(params_file).items():
        np.testing.assert_array_equal(resumed_params[name].data().asnumpy(), value.asnumpy())
    # The trainer takes the file's momentum and counters and starts at epoch 1 of 16 samples.
    from gluon_elastic import ElasticTrainer
    from gluon_elastic.backends import LocalBackend
    from gluon_elastic.data import ElasticSampler

    elastic = ElasticTrainer(resumed_net.collect_params(), "nag",
                             {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4},
                             kvstore=LocalBackend("device"), local_batch_size=4)
    sampler = ElasticSampler(16, seed=1)
    message = cls.make_on_start(args, 16)(elastic, sampler, False)
    assert message == "started at epoch 1 (iteration 4) from %s" % states_file
    assert (elastic.iteration, elastic.progress, sampler.epoch) == (4, 16, 1)
    assert elastic.optimizer.num_update == 2
    for index, momentum in saved_momentum.items():
        np.testing.assert_array_equal(elastic._updaters[0].states[index].asnumpy(), momentum)
    # --resume-epoch alone (GluonCV allows it): the schedule and counters start at epoch 1 too.
    alone = cls.parse_args(["--model", "resnet18_v1b"] + SMALL + rec_flags(rec_dir)
                           + ["--batch-size", "4", "--num-epochs", "2", "--resume-epoch", "1"])
    fresh = ElasticTrainer(resumed_net.collect_params(), "nag", {"learning_rate": 0.1},
                           kvstore=LocalBackend("device"), local_batch_size=4)
    fresh_sampler = ElasticSampler(16, seed=1)
    assert cls.make_on_start(alone, 16)(fresh, fresh_sampler, False) == \
        "started at epoch 1 (iteration 4) from --resume-epoch"
    assert (fresh.iteration, fresh.progress, fresh.schedule_progress, fresh_sampler.epoch) == \
        (4, 16, 16, 1)
    # The whole run: epoch 1 only, 4 steps after the 4 of epoch 0.
    loop = cls.train(args)
    assert [epoch for epoch, _ in loop.history] == [1]
    assert (loop.trainer.iteration, loop.trainer.progress) == (8, 32)


# ------------------------------------------------------------------------------- models
FAMILIES = [["--model", "resnet18_v1"], ["--model", "resnet18_v1b", "--last-gamma"],
            ["--model", "resnet18_v2"], ["--model", "resnext50_32x4d", "--use_se"],
            ["--model", "se_resnet18_v1"], ["--model", "mobilenet0.25"],
            ["--model", "mobilenetv2_0.25"], ["--model", "mobilenetv3_small"],
            ["--model", "vgg11", "--batch-norm", "--mixup", "--label-smoothing"]]


@pytest.mark.timeout(300)
def test_each_model_family_builds_and_takes_one_step():
    from gluon_elastic import ElasticTrainer
    from gluon_elastic.backends import LocalBackend

    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.normal(size=(2, 3, 32, 32)))
    label = mx.nd.array([1, 3])
    for family in FAMILIES:
        args = cls.parse_args(family + SMALL + ["--synthetic", "--synthetic-samples", "4",
                                                "--batch-size", "2", "--mode", "hybrid"])
        net = cls.build_model(args, [mx.cpu()])
        trainer = ElasticTrainer(net.collect_params(), "nag", {"learning_rate": 0.05,
                                                               "momentum": 0.9},
                                 kvstore=LocalBackend("device"), local_batch_size=2)
        loss_fn = cls.TrainingLoss(args)
        weights = {name: p.data().asnumpy() for name, p in net.collect_params().items()
                   if p.grad_req != "null"}
        with mx.autograd.record():
            loss = loss_fn(net, (data, label))
        loss.backward()
        trainer.step(2)
        assert loss.shape == (2,) and np.isfinite(loss.asnumpy()).all(), family
        moved = [name for name, p in net.collect_params().items()
                 if name in weights and not np.array_equal(p.data().asnumpy(), weights[name])]
        # The classifier's weight always moves (deep layers' first steps can be below float32's
        # resolution of the weight); the output has --classes units.
        output_weight = [name for name, p in net.collect_params().items()
                         if name.endswith("weight") and p.shape[0] == 4 and len(p.shape) >= 2][-1]
        assert output_weight in moved, family
        assert trainer.iteration == 1
        assert loss_fn.metric.get()[0] == ("rmse" if "--mixup" in family else "accuracy")


# ------------------------------------------------------------------------- augmentation
def _gluoncv_transforms(input_size, crop_ratio):
    """GluonCV 0.10's train_imagenet.py get_data_loader transforms, as its source writes them."""
    from mxnet.gluon.data.vision import transforms

    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    jitter_param = 0.4
    lighting_param = 0.1
    resize = int(np.ceil(input_size / crop_ratio))
    transform_train = transforms.Compose([
        transforms.RandomResizedCrop(input_size),
        transforms.RandomFlipLeftRight(),
        transforms.RandomColorJitter(brightness=jitter_param, contrast=jitter_param,
                                     saturation=jitter_param),
        transforms.RandomLighting(lighting_param),
        transforms.ToTensor(),
        normalize
    ])
    transform_test = transforms.Compose([
        transforms.Resize(resize, keep_ratio=True),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        normalize
    ])
    return transform_train, transform_test


def _steps(compose):
    """Each step of a Compose, in order (Compose groups hybridizable steps in sequences): its type
    and its settings (constructor arguments)."""
    steps = []
    for step in compose._children.values():
        if isinstance(step, (gluon.nn.Sequential, gluon.nn.HybridSequential)):
            steps.extend(_steps(step))
        else:
            # A list or a tuple of numbers: the same setting.
            steps.append((type(step).__name__, {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in vars(step).items()
                if key in ("_args", "_alpha", "_size", "_keep", "_mean", "_std",
                           "_interpolation")}))
    return steps


def test_image_transforms_are_gluoncvs(rec_dir):
    """The folder and index readers transform as GluonCV's get_data_loader does: the same steps
    with the same settings, and the same tensors for the same random choices; each sample's
    choices are a pure function of (seed, epoch, index)."""
    import random

    reference_train, reference_test = _gluoncv_transforms(32, 0.8)
    assert _steps(cls.gluoncv_train_transform(32)) == _steps(reference_train)
    assert _steps(cls.gluoncv_val_transform(32, 0.8)) == _steps(reference_test)
    assert [name for name, _ in _steps(reference_train)] == [
        "RandomResizedCrop", "RandomFlipLeftRight", "RandomColorJitter", "RandomLighting",
        "ToTensor", "Normalize"]
    images = cls.RecordImages(os.path.join(rec_dir, "train.rec"),
                              os.path.join(rec_dir, "train.idx"))
    train = cls.TrainTransform(images, 32, seed=3, epoch=1)
    for index in (0, 5):
        tensor, label = train[index]
        image, expected_label = images[index]
        # The sample's seed: (seed, epoch, index) -> (3 * 7919 + 1 * 104729 + index).
        random.seed(3 * 7919 + 104729 + index)
        mx.random.seed(3 * 7919 + 104729 + index, ctx=mx.cpu())
        np.testing.assert_array_equal(tensor.asnumpy(), reference_train(image).asnumpy())
        assert tensor.shape == (3, 32, 32) and label == expected_label
        np.testing.assert_array_equal(train[index][0].asnumpy(), tensor.asnumpy())
    assert not np.array_equal(train[0][0].asnumpy(),
                              cls.TrainTransform(images, 32, seed=3, epoch=2)[0][0].asnumpy())
    val = cls.ValTransform(images, 32, 0.8)
    np.testing.assert_array_equal(val[1][0].asnumpy(), reference_test(images[1][0]).asnumpy())


def test_record_iter_takes_gluoncvs_arguments():
    """--use-rec: ImageRecordIter gets GluonCV 0.10's get_data_rec training arguments (file,
    batch and shuffling aside, which the elastic parts set)."""
    args = types.SimpleNamespace(num_data_workers=4, input_size=224)
    jitter_param, lighting_param = 0.4, 0.1
    mean_rgb = [123.68, 116.779, 103.939]
    std_rgb = [58.393, 57.12, 57.375]
    assert cls.record_iter_kwargs(args) == dict(
        preprocess_threads=4, data_shape=(3, 224, 224),
        mean_r=mean_rgb[0], mean_g=mean_rgb[1], mean_b=mean_rgb[2],
        std_r=std_rgb[0], std_g=std_rgb[1], std_b=std_rgb[2],
        rand_mirror=True, random_resized_crop=True, max_aspect_ratio=4. / 3.,
        min_aspect_ratio=3. / 4., max_random_area=1, min_random_area=0.08,
        brightness=jitter_param, saturation=jitter_param, contrast=jitter_param,
        pca_noise=lighting_param)


# -------------------------------------------------------------------- ImageRecordIter parts
@pytest.fixture(scope="module")
def numbered_rec(tmp_path_factory):
    """12 records whose label is their own number: which records a worker read is visible."""
    directory = str(tmp_path_factory.mktemp("numbered"))
    return recipe_data.make_imagenet_rec(directory, num_train=12, num_val=2, classes=12, size=36)


def _read_labels(numbered_rec, world_size, rank, processed, steps, local_batch_size, epoch=0):
    args = cls.parse_args(["--model", "resnet18_v1b"] + SMALL[:-4] + ["--classes", "12"]
                          + rec_flags(numbered_rec, reader="iter"))
    loader = cls.RecordIterLoader(args)
    trainer = types.SimpleNamespace(world_size=world_size, rank=rank,
                                    local_batch_size=local_batch_size,
                                    global_batch_size=local_batch_size * world_size)
    loader.attach(trainer, types.SimpleNamespace(processed=processed), False)
    batches = loader([[0] * local_batch_size] * steps, epoch)
    return [int(x) for data, label in batches for x in label.asnumpy()]


@pytest.mark.timeout(240)
def test_record_iter_parts_exactly_once_and_the_mid_epoch_resize_limit(numbered_rec):
    # World 2, 3 steps of 2 per worker: the 12 records once each.
    full = [_read_labels(numbered_rec, 2, rank, 0, 3, 2) for rank in (0, 1)]
    assert sorted(full[0] + full[1]) == list(range(12))
    assert sorted(full[0]) == list(range(6))         # MXNet's contiguous parts of the index
    # A restart after 1 step (4 samples of the group) in the same world: exactly the rest.
    rest = [_read_labels(numbered_rec, 2, rank, 4, 2, 2) for rank in (0, 1)]
    assert rest == [full[0][2:], full[1][2:]]
    # The documented limit: a resize 2 -> 3 after that step keeps the count (each part skips
    # 4 // 3 = 1 of its own records), not the identity of the records.
    after = [_read_labels(numbered_rec, 3, rank, 4, 2, 1) for rank in (0, 1, 2)]
    epoch = full[0][:2] + full[1][:2] + after[0] + after[1] + after[2]
    assert len(epoch) == 10
    repeated = len(epoch) - len(set(epoch))
    missing = 12 - len(set(epoch))
    assert missing == repeated + 2      # the 2 of the dropped tail, plus one per repeat
    # A part that ends before the steps asked of it (MXNet gives the last part the rest) is read
    # again, in the same order, rather than ending early and leaving the others waiting.
    assert _read_labels(numbered_rec, 2, 0, 0, 4, 2) == full[0] + full[0][:2]


def _corrupt(rec_dir, out_dir, key):
    """A copy of the training set whose record ``key`` has its JPEG payload overwritten."""
    import shutil

    for name in ("train.rec", "train.idx", "val.rec", "val.idx"):
        shutil.copy(os.path.join(rec_dir, name), os.path.join(out_dir, name))
    offsets = dict(line.split() for line in open(os.path.join(out_dir, "train.idx")))
    with open(os.path.join(out_dir, "train.rec"), "r+b") as fout:
        fout.seek(int(offsets[str(key)]) + 8 + 24 + 20)
        fout.write(b"\0" * 400)
    return out_dir


@pytest.mark.timeout(300)
@pytest.mark.parametrize("reader", ["iter", "index"])
def test_corrupt_record_stops_the_run_naming_file_and_record(rec_dir, tmp_path, capsys, reader):
    bad_dir = _corrupt(rec_dir, str(tmp_path), key=3)
    argv = ["--model", "resnet18_v1b"] + SMALL + rec_flags(bad_dir, reader=reader) + \
        ["--batch-size", "4", "--num-epochs", "1"]
    with pytest.raises(SystemExit) as info:
        cls.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 1, err
    assert "%s: record 3 (key 3) does not decode as an image" % os.path.join(bad_dir, "train.rec") \
        in err, err


@pytest.mark.timeout(300)
def test_image_folders_train_and_classes_checked(tmp_path, capsys):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, count in (("train", 8), ("val", 4)):
        for index in range(count):
            label = index % 4
            folder = tmp_path / "imagenet" / split / ("n%08d" % label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(recipe_data._image(rng, 40, label)).save(folder / ("%d.jpg" % index))
    argv = ["--model", "mobilenet0.25", "--data-dir", str(tmp_path / "imagenet"), "--mode",
            "hybrid", "--batch-size", "4", "--num-epochs", "1"] + SMALL
    loop = cls.train(cls.parse_args(argv))
    assert (loop.trainer.iteration, loop.trainer.progress) == (2, 8)
    (epoch, metrics), = loop.history
    assert set(metrics) == {"err-top1", "err-top5"} and metrics["err-top5"] == 0.0
    code, err = recipe_data.exit_code(cls, argv[:-len(SMALL)] + SMALL[:2] + ["--classes", "3"],
                                      capsys)
    assert code == 2 and "--classes 3 disagrees with %s: it holds label 3" % (
        tmp_path / "imagenet" / "train") in err, err


@pytest.mark.dist
@pytest.mark.timeout(360)
def test_published_command_on_a_two_worker_kvstore_group(rec_dir, tmp_path):
    """The same published command with --backend dist_sync on 2 workers: each reads its part of
    the RecordIO file through ImageRecordIter; the global batch is 2 workers x --batch-size 2."""
    argv = ["--rec-train", os.path.join(rec_dir, "train.rec"),
            "--rec-train-idx", os.path.join(rec_dir, "train.idx"),
            "--rec-val", os.path.join(rec_dir, "val.rec"),
            "--rec-val-idx", os.path.join(rec_dir, "val.idx"),
            "--model", "resnet50_v1b", "--mode", "hybrid", "--lr", "0.4", "--lr-mode", "cosine",
            "--num-epochs", "1", "--batch-size", "2", "--num-gpus", "0", "-j", "1",
            "--warmup-epochs", "0", "--use-rec", "--last-gamma", "--no-wd", "--label-smoothing",
            "--save-dir", str(tmp_path / "params"), "--logging-file", str(tmp_path / "train.log"),
            "--input-size", "32", "--log-interval", "1", "--backend", "dist_sync"]
    code, output = recipe_data.run_kvstore_group([sys.executable, SCRIPT] + argv, timeout=320)
    assert code == 0, output[-4000:]
    records = parse_gluoncv_log(open(tmp_path / "train.log").read())
    batches = [r for r in records if r["kind"] == "batch"]
    # 16 images, global batch 4: 4 steps; the cosine LR of each step (no warmup).
    assert [(r["batch"], r["world"], r["global_batch"]) for r in batches] == \
        [(i, 2, 4) for i in range(4)]
    assert [r["lr"] for r in batches] == pytest.approx(
        [0.4 * (1 + np.cos(np.pi * p / 16)) / 2 for p in (0, 4, 8, 12)], abs=1e-6)
    assert [r["epoch"] for r in records if r["kind"] == "validation"] == [0]
    assert sorted(os.listdir(tmp_path / "params"))[-2:] == ["imagenet-resnet50_v1b-0.params",
                                                           "imagenet-resnet50_v1b-0.states"]


@pytest.mark.timeout(300)
def test_record_iter_feeds_emulated_workers(rec_dir):
    """--use-rec with --emulate-schedule: one ImageRecordIter over the whole file feeds both
    virtual workers (2 x --batch-size 2 = 4 per step, 16 images: 4 steps per epoch)."""
    loop = cls.train(cls.parse_args(["--model", "resnet18_v1b", "--mode", "hybrid"] + SMALL
                                    + rec_flags(rec_dir, reader="iter")
                                    + ["--batch-size", "2", "--num-epochs", "2",
                                       "--emulate-schedule", "0:1,1:2"]))
    # Epoch 0: world 1, 8 steps of 2; epoch 1: world 2, 4 steps of 4.
    assert (loop.trainer.world_size, loop.trainer.iteration, loop.trainer.progress) == (2, 12, 32)
    assert [epoch for epoch, _ in loop.history] == [0, 1]
