"""The ImageNet classification recipe on a tiny RecordIO set: bad input, local training with
checkpoints, and the emulated 1 -> 2 worker schedule against the same schedule on real workers
(1 process, then a 2-worker KVStore group resuming from its checkpoint)."""
import functools
import os
import sys

import numpy as np
import pytest

import recipe_data
from gluon_elastic.metrics import read_records

pytest.importorskip("gluoncv")
from gluon_elastic import recipe  # noqa: E402
from gluon_elastic.checkpoint import CheckpointManager  # noqa: E402

cls = recipe_data.load_recipe("scripts/classification/train_imagenet.py")

TINY = ["--model", "resnet18_v1b", "--classes", "4", "--input-size", "32", "--crop-ratio", "0.8",
        "--num-data-workers", "0", "--log-interval", "1", "--warmup-epochs", "0.5",
        "--lr", "0.05", "--seed", "3", "--mode", "hybrid", "--save-frequency", "0",
        "--logging-file", ""]


def rec_flags(rec_dir, reader="index"):
    """GluonCV's RecordIO flags for the tiny set, read by the sampler's indices by default."""
    return ["--use-rec", "--rec-reader", reader,
            "--rec-train", os.path.join(rec_dir, "train.rec"),
            "--rec-train-idx", os.path.join(rec_dir, "train.idx"),
            "--rec-val", os.path.join(rec_dir, "val.rec"),
            "--rec-val-idx", os.path.join(rec_dir, "val.idx")]


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    return recipe_data.make_imagenet_rec(str(tmp_path_factory.mktemp("imagenet")), num_train=16,
                                         num_val=8, classes=4, size=40)


_exit_code = functools.partial(recipe_data.exit_code, cls)


def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(rec_dir, tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    base = TINY + ["--checkpoint-dir", ckpt]
    code, err = _exit_code(base + ["--data-dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere has no train/ folder" in err
    code, err = _exit_code(base + rec_flags(str(tmp_path)), capsys)
    assert code == 2 and "--rec-train %s: no such file" % (tmp_path / "train.rec") in err
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--model", "resnet7_v9"], capsys)
    assert code == 2 and "'resnet7_v9'" in err and "resnet50_v1b" in err and "mobilenetv3_small" in err
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--emulate-schedule", "0:4,0:8"], capsys)
    assert code == 2 and "must start at 0 and increase" in err
    # 16 images cannot fill a global batch of 4 x 8 = 32.
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--emulate-schedule", "0:2,1:8",
                                   "--local-batch-size", "4", "--epochs", "2"], capsys, train=True)
    assert code == 2 and "global batch 32 (world 8) is larger than the 16 training samples" in err
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--emulate-schedule", "0:2,5:4",
                                   "--epochs", "2"], capsys, train=True)
    assert code == 2 and "changes the world at epoch 5" in err
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--emulate-schedule", "0:2",
                                   "--backend", "dist_sync"], capsys, train=True)
    assert code == 2 and "--backend local or device" in err
    code, err = _exit_code(base + rec_flags(rec_dir) + ["--dtype", "float16", "--device", "cpu",
                                   "--local-batch-size", "2"],
                           capsys, train=True)
    assert code == 2 and "float16 needs a GPU" in err
    assert not os.path.exists(ckpt)


def test_local_training_logs_evaluates_checkpoints_and_resumes(rec_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    argv = TINY + rec_flags(rec_dir) + ["--local-batch-size", "4", "--epochs", "1",
                   "--checkpoint-dir", ckpt, "--label-smoothing", "0.1"]
    loop = cls.train(cls.parse_args(argv))
    # 16 images, global batch 4: 4 steps; top-1/top-5 over the 8 validation images.
    assert loop.trainer.iteration == 4 and loop.trainer.progress == 16
    (epoch, metrics), = loop.history
    assert epoch == 0 and set(metrics) == {"err-top1", "err-top5"}
    assert metrics["err-top1"] in {k / 8 for k in range(9)} and metrics["err-top5"] == 0.0
    index = recipe.latest_checkpoint(ckpt)
    assert index["sampler"] == {"epoch": 1, "processed": 0, "seed": 3, "num_samples": 16,
                                "shuffle": True}
    assert (index["step"], index["iteration"], index["world_size"]) == (4, 4, 1)
    saved = index["params"]
    current = {p.name: p.data().asnumpy() for p in loop.net.collect_params().values()}
    assert set(saved) == set(current)
    for name, value in saved.items():
        np.testing.assert_array_equal(value, current[name])
    # One checkpoint system on disk: CheckpointManager files only.
    assert all(name.startswith("state-") for name in os.listdir(ckpt)), os.listdir(ckpt)
    # The same command with --epochs 2 resumes after epoch 0: 4 more steps, progress goes on.
    loop2 = cls.train(cls.parse_args(argv[:-6] + ["--epochs", "2", "--checkpoint-dir", ckpt,
                                                  "--label-smoothing", "0.1"]))
    assert loop2.trainer.iteration == 8 and loop2.trainer.progress == 32
    assert [e for e, _ in loop2.history] == [1]


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_emulated_schedule_matches_real_workers(rec_dir, tmp_path):
    """Schedule 0:1,1:2 (per-worker batch 2, 16 images): emulated in one process, and for real as
    one process for epoch 0 followed by a 2-worker KVStore group resuming from its checkpoint.
    Weights, BatchNorm statistics of rank 0, LR trajectory and progress agree."""
    # The epoch-0 run stops after one epoch, so the schedule must not depend on --epochs: step
    # decay at epoch 1, no warmup. A small LR keeps training far from divergence, where rounding
    # differences between the processes' kernels would be amplified beyond any tolerance.
    common = TINY + rec_flags(rec_dir) + ["--local-batch-size", "2", "--lr", "0.01",
                     "--lr-mode", "step", "--lr-decay-epoch", "1", "--warmup-epochs", "0"]
    emulated_dir, real_dir = str(tmp_path / "emulated"), str(tmp_path / "real")
    emulated_metrics, real_metrics = str(tmp_path / "emulated.jsonl"), str(tmp_path / "real.jsonl")
    emulated = cls.train(cls.parse_args(common + ["--epochs", "2", "--emulate-schedule", "0:1,1:2",
                                                  "--checkpoint-dir", emulated_dir,
                                                  "--metrics-file", emulated_metrics]))
    assert emulated.trainer.world_size == 2
    # 8 steps of 2 at world 1, then 4 steps of 4 at world 2.
    assert (emulated.trainer.iteration, emulated.trainer.progress) == (12, 32)
    cls.train(cls.parse_args(common + ["--epochs", "1", "--checkpoint-dir", real_dir,
                                       "--metrics-file", real_metrics]))
    command = [sys.executable, os.path.join(recipe_data.ROOT, "scripts", "classification",
                                            "train_imagenet.py")]
    command += common + ["--epochs", "2", "--checkpoint-dir", real_dir, "--backend", "dist_sync",
                         "--metrics-file", real_metrics]
    code, log = recipe_data.run_kvstore_group(command, timeout=200)
    assert code == 0, log[-3000:]
    assert "world change at iteration 8: world 1 -> 2, global batch 2 -> 4" in log
    records = recipe_data.parse_log(log)
    batches = [r for r in records if r["kind"] == "batch" and r["epoch"] == 1]
    assert [(r["world"], r["global_batch"]) for r in batches] == [(2, 4)] * 4
    index_e = recipe.latest_checkpoint(emulated_dir)
    index_r = recipe.latest_checkpoint(real_dir)
    for key in ("step", "epoch", "iteration", "progress", "world_size", "sampler"):
        assert index_e[key] == index_r[key], key
    # Iteration 12 lies inside the 16-iteration ramp that started at iteration 8 (k = 2): the
    # restarted group continued the ramp from the saved transition, as the emulation did.
    assert index_r["lr"] == pytest.approx(index_e["lr"], rel=1e-12)
    schedule = emulated.trainer.schedule
    # The last step (iteration 11) started at progress 16 + 3 * 4 = 28, after the decay at 16.
    assert index_e["lr"] == pytest.approx(schedule(28) * (1 + 3 / 16), rel=1e-12)
    params_e, params_r = index_e["params"], index_r["params"]
    assert set(params_e) == set(params_r)
    # The end of epoch 0 (step 8), where the real group started from.
    initial = CheckpointManager(real_dir).load(8)["params"]
    moved, mismatched = 0, []
    for name in sorted(params_e):
        a, b = params_e[name], params_r[name]
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            mismatched.append((name, float(np.abs(a - b).max()), float(np.abs(a).max())))
        moved += not np.allclose(a, initial[name])
    assert not mismatched, " ".join(m[0] for m in mismatched if "running" not in m[0]) + " %d" % len(mismatched)
    assert moved > len(params_e) // 2   # epoch 1 really trained
    # Metrics: one world change at iteration 8 in both runs, as logged; the real run's file holds
    # the first process's epoch, then the group's restart from the checkpoint (nothing lost).
    emulated_records, real_records = read_records(emulated_metrics), read_records(real_metrics)
    for records in (emulated_records, real_records):
        changes = [(r["iteration"], r["world_size_from"], r["world_size"],
                    r["global_batch_size_from"], r["global_batch_size"], r["ramp_iterations"])
                   for r in records if r["kind"] == "event" and r["event"] == "world_change"]
        assert changes == [(8, 1, 2, 2, 4, 16)]
        steps = [r for r in records if r["kind"] == "step"]
        assert [(r["iteration"], r["world_size"], r["global_batch_size"]) for r in steps] == \
            [(i, 1, 2) for i in range(1, 9)] + [(i, 2, 4) for i in range(9, 13)]
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
        # The running training accuracy of the epoch, a fraction of the samples seen so far.
        assert all(set(r["metric"]) == {"accuracy"} and 0.0 <= r["metric"]["accuracy"] <= 1.0
                   for r in steps)
    assert [r["event"] for r in real_records if r["kind"] == "event"] == ["restart", "world_change"]
    restart = [r for r in real_records if r["kind"] == "event"][0]
    assert (restart["iteration"], restart["iteration_from"], restart["progress"]) == (8, 8, 16)
    assert [r["kind"] for r in real_records].count("start") == 2
    lrs = [[r["lr"] for r in records if r["kind"] == "step"]
           for records in (emulated_records, real_records)]
    assert lrs[1] == pytest.approx(lrs[0], rel=1e-12)
    assert [r["lr"] for r in emulated_records if r["kind"] == "step"][-1] == index_e["lr"]


@pytest.mark.dist
@pytest.mark.timeout(260)
def test_horovod_elastic_grow_one_to_two_workers(tmp_path):
    """Elastic horovodrun: 1 worker; a second joins once 4 samples are trained (discovery follows
    rank 0's --progress-file; the change lands when the driver has noticed it, in either epoch) and
    starts from rank 0's state. The rest of the epoch is split over the new world without repeating
    or skipping a sample, and the LR ramps to the doubled batch."""
    pytest.importorskip("horovod.mxnet")
    # 64 samples: enough steps after the threshold for the driver to notice the new host and
    # the joining worker to start, also on a loaded machine.
    rec_dir = recipe_data.make_imagenet_rec(str(tmp_path / "data"), num_train=64, num_val=8,
                                            classes=4, size=40)
    ckpt = str(tmp_path / "ckpt")
    argv = [os.path.join(recipe_data.ROOT, "scripts", "classification", "train_imagenet.py")]
    metrics_file = str(tmp_path / "run.jsonl")
    argv += TINY + rec_flags(rec_dir) + ["--local-batch-size", "2", "--epochs", "2",
                    "--checkpoint-dir", ckpt, "--commit-interval", "8",
                    "--metrics-file", metrics_file]
    code, output = recipe_data.run_horovod_elastic(str(tmp_path), argv, "0:1;4:2", np_start=1,
                                                   min_np=1, max_np=2, timeout=230)
    assert code == 0, output[-4000:]
    index = recipe.latest_checkpoint(ckpt)
    change_step = recipe_data.check_one_grow(output, index, num_train=64, local_batch_size=2,
                                             epochs=2)
    # The metrics file tells the same story as the log: one reset, one world change at the
    # logged iteration, every step's world as in the log's batch lines.
    records = read_records(metrics_file)
    events = [(r["event"], r.get("iteration"), r.get("world_size_from"), r["world_size"])
              for r in records if r["kind"] == "event"]
    assert events == [("reset", None, 1, 2), ("world_change", change_step, 1, 2)]
    logged = [(r["world"], r["global_batch"]) for r in recipe_data.parse_log(output)
              if r["kind"] == "batch"]
    assert [(r["world_size"], r["global_batch_size"]) for r in records if r["kind"] == "step"] \
        == logged
    assert [r["iteration"] for r in records if r["kind"] == "step"] == \
        list(range(1, index["iteration"] + 1))
