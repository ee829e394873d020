"""Smoke tests of the benchmark commands: a reduced run writes well-formed outputs (not timing).

The convergence study runs on Fashion-MNIST-shaped IDX files written here (no package needed) and
is checked against closed-form values of its configuration: the steps each world takes, the world
size and the LR the trainer applied at each change.
"""
import csv
import gzip
import importlib.util
import json
import math
import os
import shutil
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Each command takes well under a minute on an idle 2-core machine; shared machines are slower.
pytestmark = pytest.mark.timeout(900)


def run(command, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def out_dir():
    # A private folder rather than pytest's basetemp, which concurrent pytest runs of the same
    # user may prune while this module's fixture still uses it.
    path = pathlib.Path(tempfile.mkdtemp(prefix="gluon_elastic_bench_"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_idx(path, array):
    """An IDX file of unsigned bytes (gzipped when the name ends in .gz), as LeCun's format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">%dI" % array.ndim, *array.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as fout:
        fout.write(header + array.astype(np.uint8).tobytes())


def make_fashion_like(folder, train=2048, test=256, gz=True):
    """Four Fashion-MNIST-named IDX files: class c brightens rows 2c..2c+3 (learnable)."""
    rng = np.random.RandomState(0)
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.randint(0, 10, count)
        images = rng.randint(0, 80, (count, 28, 28))
        for index, label in enumerate(labels):
            images[index, 2 * label:2 * label + 4, :] += 120
        suffix = ".gz" if gz else ""
        write_idx(folder / ("%s-images-idx3-ubyte%s" % (split, suffix)), images)
        write_idx(folder / ("%s-labels-idx1-ubyte%s" % (split, suffix)), labels)
        arrays[split] = (images, labels)
    return arrays


def load_study():
    spec = importlib.util.spec_from_file_location(
        "convergence_study", os.path.join(ROOT, "benchmarks", "convergence.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gz", [True, False])
def test_convergence_reads_idx_files_made_here(out_dir, gz):
    arrays = make_fashion_like(out_dir, train=64, test=32, gz=gz)
    study = load_study()
    files = study.find_idx_files(str(out_dir))
    assert all(path.endswith(".gz") == gz for path in files.values())
    assert (study.read_idx(files["train_images"]) == arrays["train"][0]).all()
    assert (study.read_idx(files["test_labels"]) == arrays["t10k"][1]).all()
    train_x, train_y, test_x, test_y = study.load_fashion_mnist(str(out_dir), 48)
    assert train_x.shape == (48, 1, 28, 28) and train_x.dtype == np.float32
    assert test_x.shape == (32, 1, 28, 28)
    assert (train_y == arrays["train"][1][:48]).all() and (test_y == arrays["t10k"][1]).all()
    # (pixel / 255 - mean) / std, Fashion-MNIST's statistics.
    assert train_x[5, 0, 3, 7] == pytest.approx(
        (arrays["train"][0][5, 3, 7] / 255.0 - 0.2860) / 0.3530, rel=1e-6)
    bad = str(out_dir / ("bad-idx1-ubyte" + (".gz" if gz else "")))
    with (gzip.open if gz else open)(bad, "wb") as fout:
        fout.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        study.read_idx(bad)


def test_convergence_data_install_or_instructions(out_dir):
    study = load_study()
    # The package's folder, missing here (a fresh machine): as root with apt-get the study runs
    # apt-get update, then installs the package; the fake install installs nothing, so it stops.
    study.DEFAULT_DATA_DIR = str(out_dir / "usr-share-datasets-fashion-mnist")
    calls = []
    fake = {"run": lambda command, check: calls.append(command),
            "which": lambda name: "/usr/bin/" + name}
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        study.ensure_data(study.DEFAULT_DATA_DIR, is_root=True, **fake)
    assert calls == [["apt-get", "update"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]]
    # Not root, no apt-get, or another folder: instructions only, nothing run.
    calls.clear()
    for data_dir, is_root, which in ((study.DEFAULT_DATA_DIR, False, fake["which"]),
                                     (study.DEFAULT_DATA_DIR, True, lambda name: None),
                                     (str(out_dir), True, fake["which"])):
        with pytest.raises(SystemExit, match="missing: train-images-idx3-ubyte"):
            study.ensure_data(data_dir, run=fake["run"], is_root=is_root, which=which)
    assert calls == []
    make_fashion_like(out_dir, train=16, test=16)
    assert study.ensure_data(str(out_dir), **fake)["test_images"] == str(
        out_dir / "t10k-images-idx3-ubyte.gz")
    assert calls == []


SMOKE_METHODS = ("static_small", "immediate", "dynamic_auto", "adascale")


@pytest.fixture(scope="module")
def convergence_out():
    out = pathlib.Path(tempfile.mkdtemp(prefix="gluon_elastic_convergence_"))
    try:
        data = out / "data"
        data.mkdir()
        make_fashion_like(data)
        readme = out / "README.md"
        shutil.copy(os.path.join(ROOT, "benchmarks", "README.md"), readme)
        run([PYTHON, "benchmarks/convergence.py", "--scale", "smoke", "--train-samples", "2048",
             "--data-dir", str(data), "--out", str(out), "--readme", str(readme),
             "--methods", *SMOKE_METHODS], timeout=600)
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_convergence_traces_follow_the_schedule(convergence_out):
    with open(convergence_out / "convergence.json") as fin:
        saved = json.load(fin)
    assert saved["complete"] is True
    runs = {(r["config"]["schedule"], r["config"]["method"]): r for r in saved["runs"]}
    assert sorted(runs) == sorted((s, m) for s in ("grow16", "spot") for m in SMOKE_METHODS)
    # 2,048 images an epoch, per-worker batch 16. grow16: 1 worker for 2,048 samples (128 steps),
    # 16 for 4,096 (16 steps), 2 for 2,048 (64 steps); the static world: 8,192 / 16 = 512 steps.
    assert runs[("grow16", "immediate")]["iterations"] == 128 + 16 + 64
    assert runs[("grow16", "static_small")]["iterations"] == 512
    # spot: 1,024 samples a phase at 2, 8, 4, 8, 2 workers.
    assert runs[("spot", "dynamic_auto")]["iterations"] == 32 + 8 + 16 + 8 + 32
    assert runs[("spot", "static_small")]["iterations"] == 5 * 32
    grow = runs[("grow16", "immediate")]["windows"]
    assert [w["change_samples"] for w in grow] == [2048, 6144]
    assert [w["iteration"] for w in grow] == [128, 144]
    first = grow[0]
    assert first["offset"][:2] == [-50, -49] and first["offset"].index(0) == 50
    zero = first["offset"].index(0)
    assert first["world_size"][zero - 1:zero + 1] == [1, 16]
    # Base LR 0.05 per 16 samples, warmup over 512 samples long done: immediate jumps to 16x.
    assert first["lr"][zero - 1:zero + 1] == [0.05, 0.8]
    # Automatic T at momentum 0.9: T = ceil(15 * 0.9 / 0.1) = 135 steps from 1x to 16x.
    auto = runs[("grow16", "dynamic_auto")]["windows"]
    zero = auto[0]["offset"].index(0)
    assert auto[0]["lr"][zero:zero + 2] == [0.05, pytest.approx(0.05 * (1 + 15 / 135), rel=1e-3)]
    # 16 steps into that ramp the world shrinks to 2: multiplier in use 1 + 16 * 15 / 135 > 2, a
    # shrink, cut at once to 2x.
    zero = auto[1]["offset"].index(0)
    assert auto[1]["lr"][zero - 1:zero + 1] == [pytest.approx(0.05 * (1 + 15 * 15 / 135), rel=1e-3),
                                                0.1]
    # AdaScale: gain 1 in the one-worker world, between 1 and S = 16 once 16 workers measure noise.
    ada = runs[("grow16", "adascale")]["windows"][0]
    zero = ada["offset"].index(0)
    assert ada["lr"][zero - 1] == 0.05
    assert all(0.05 <= lr <= 0.8 for lr in ada["lr"][zero:zero + 16])
    for run_ in saved["runs"]:
        evals = run_["evals"]
        epochs = 4 if run_["config"]["schedule"] == "grow16" else 2.5
        # Every 1/8 epoch (256 samples) and once before training.
        assert evals["samples"] == [256 * i for i in range(int(8 * epochs) + 1)]
        assert all(0.0 <= acc <= 1.0 for acc in evals["test_accuracy"])
        for window in run_["windows"]:
            assert len({len(window[k]) for k in ("offset", "lr", "loss", "momentum_norm")}) == 1
            assert all(float(v) > 0 for v in window["loss"])
    assert runs[("grow16", "static_small")]["final_test_accuracy"] > 0.5  # it learned


def test_convergence_tables_csv_and_plots(convergence_out):
    with open(convergence_out / "convergence.csv") as fin:
        rows = list(csv.DictReader(fin))
    # grow16 has two changes, spot four; four methods, one LR, one seed.
    assert len(rows) == 4 * (2 + 4)
    for row in rows:
        assert 0.0 <= float(row["final_test_accuracy"]) <= 1.0
        assert float(row["peak_loss"]) >= float(row["spike_loss"]) > 0
    table = (convergence_out / "convergence.md").read_text()
    for method in SMOKE_METHODS:
        # One row per cell in the method tables.
        label = "| %s | 0/1 |" % {"static_small": "static small world",
                                  "immediate": "immediate + Goyal correction (Eq. 5)",
                                  "dynamic_auto": "Dynamic SGD, automatic T",
                                  "adascale": "AdaScale (gain ramped, T = 8k)"}[method]
        assert table.count(label) == 2
    # Dynamic SGD (automatic T) against each baseline present, per cell.
    assert table.count("| Dynamic SGD, automatic T | ") - table.count(
        "| Dynamic SGD, automatic T | 0/1 |") == 2 * 3
    plots = sorted(p for p in os.listdir(convergence_out) if p.endswith(".png"))
    assert plots == sorted(["convergence_grow16_lr0.05_change1.png",
                            "convergence_grow16_lr0.05_change2.png",
                            "convergence_spot_lr0.05_change1.png",
                            "convergence_spot_lr0.05_change2.png",
                            "convergence_spot_lr0.05_change3.png",
                            "convergence_spot_lr0.05_change4.png",
                            "convergence_summary.png", "convergence_curves.png"])
    for name in plots:
        with open(convergence_out / name, "rb") as fin:
            assert fin.read(8) == PNG_MAGIC
    readme = (convergence_out / "README.md").read_text()
    block = readme.split("<!-- convergence:begin")[1].split("<!-- convergence:end -->")[0]
    assert "| static small world | 0/1 |" in block
    assert all("](%s)" % name in block for name in plots)
    assert "## Other benchmarks" in readme


def test_convergence_render_only_reproduces_the_tables(convergence_out):
    table = (convergence_out / "convergence.md").read_text()
    os.remove(convergence_out / "convergence.md")
    run([PYTHON, "benchmarks/convergence.py", "--render-only", "--out", str(convergence_out),
         "--readme", ""], timeout=300)
    assert (convergence_out / "convergence.md").read_text() == table


def test_convergence_gpu_scale_dry_run(out_dir):
    make_fashion_like(out_dir)
    proc = run([PYTHON, "benchmarks/convergence.py", "--scale", "gpu", "--dry-run",
                "--train-samples", "2048", "--data-dir", str(out_dir), "--out",
                str(out_dir / "never")], timeout=300)
    # The study's 10 methods (AdaScale's second row only on request).
    assert "scale gpu: 150 runs = 3 cells x 10 methods x 5 seeds; model cnn on cpu" in proc.stdout
    # The first run of the plan (grow16) shortened to 256 samples a phase: 16 steps in
    # the one-worker world, 1 at 16 workers, 8 at 2.
    assert "dry run: cnn on cpu, 25 steps" in proc.stdout
    assert not (out_dir / "never").exists()


def test_overhead_single_process(out_dir):
    tmp_path = out_dir
    run([PYTHON, "benchmarks/overhead.py", "--parts", "single", "--steps", "1", "--warmup", "1",
         "--repeats", "1", "--out", str(tmp_path), "--readme", ""], timeout=600)
    with open(tmp_path / "overhead.json") as fin:
        saved = json.load(fin)
    rows = saved["results"]["single"]
    assert sorted(rows) == ["ElasticTrainer (in ramp)", "ElasticTrainer (steady)", "gluon.Trainer"]
    reference = rows["gluon.Trainer"]
    for name, row in rows.items():
        if name == "gluon.Trainer":
            continue
        for key in ("rate_ratio", "step_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        # One repetition: the paired ratio is the ratio of the two medians.
        assert row["rate_ratio"] == pytest.approx(row["iterations_per_second"]
                                                  / reference["iterations_per_second"])
    assert all(row["iterations_per_second"] > 0 for row in rows.values())
    assert "| 1 process | ElasticTrainer (in ramp) |" in (tmp_path / "overhead.md").read_text()


def test_gpu_check_dry_run(out_dir):
    """The GPU check's whole path on CPU at a tiny size: set-up commands, throughput of both
    trainers for sgd/nag in float32/float16, commit cost, the emulated x4 world change and the
    Horovod part under horovodrun -np 1."""
    proc = run([PYTHON, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out_dir)],
               timeout=300)
    with open(out_dir / "gpu_check_dry_run.json") as fin:
        result = json.load(fin)
    assert (result["dry_run"], result["context"], result["mxnet"]) == (True, "cpu(0)", "1.9.1")
    assert result["errors"] == {}
    assert sorted(result["seconds"]) == ["commit", "horovod", "throughput", "world_change"]
    commands = [entry["command"] for entry in result["setup"]["commands"]]
    assert len(commands) == 3 and commands[0].endswith("-m venv " + os.path.join(
        os.path.expanduser("~"), ".cache", "gluon_elastic", "gpu_check_venv"))
    assert "mxnet-cu117==1.9.1 numpy>=1.21,<1.24 gluoncv==0.10.5.post0" in commands[1]
    assert commands[2].endswith("--no-build-isolation horovod==0.28.1")
    rows = result["throughput"]
    assert [(r["dtype"], r["optimizer"], r["compute"]) for r in rows] == [
        ("float32", "sgd", True), ("float32", "nag", True),
        ("float16", "sgd", False), ("float16", "nag", False)]
    for row in rows:
        for kind in ("gluon.Trainer", "ElasticTrainer"):
            assert row[kind]["rounds"] == 1 and row[kind]["images_per_second"] > 0
        assert row["ratio"] == pytest.approx(row["ElasticTrainer"]["images_per_second"]
                                             / row["gluon.Trainer"]["images_per_second"])
    # ResNet-50 v1b with 10 classes: 23,581,642 values including BatchNorm running statistics.
    assert [(r["dtype"], r["parameters"]) for r in result["commit"]] == [
        ("float16", 23581642), ("float32", 23581642)]
    assert all(0 < r["share_at_interval_20"] < 1 for r in result["commit"])
    change = result["world_change"]
    assert (change["from"], change["to"], change["ramp_iterations"]) == (1, 4, 4)
    steps = change["steps"]
    assert [s["world_size"] for s in steps] == [1, 1] + [4] * 6
    assert [s["global_batch_size"] for s in steps] == [2, 2] + [8] * 6
    # Dynamic SGD from 1x to 4x over T = 4 iterations, starting at the first step of world 4.
    assert [s["lr"] for s in steps] == pytest.approx(
        [0.01, 0.01, 0.01, 0.0175, 0.025, 0.0325, 0.04, 0.04])
    assert (result["horovod"]["world_size"], result["horovod"]["context"]) == (1, "cpu(0)")
    assert result["horovod"]["images_per_second"] > 0
    table = (out_dir / "gpu_check_dry_run.md").read_text()
    assert "| float16 | nag |" in table and "(update only)" in table
    assert "**Emulated world change 1 -> 4**" in table
    assert "**Horovod** (`horovodrun -np 1`, cpu(0))" in table
    assert "[gpu_check] wrote gpu_check_dry_run.json" in proc.stdout


def test_trainer_update_benchmark_small_run(out_dir):
    run([PYTHON, "benchmarks/trainer_update.py", "--sets", "small", "--repeats", "2", "--calls",
         "1", "--out", str(out_dir), "--readme", ""], timeout=300)
    raw = json.loads((out_dir / "trainer_update.json").read_text())
    assert [(r["model"], r["optimizer"]) for r in raw["results"]] == [("small", "sgd"),
                                                                       ("small", "nag")]
    for result in raw["results"]:
        # Every variant timed once per repetition, (CPU, wall) seconds each, all positive.
        assert sorted(result["samples"]) == ["ElasticTrainer|step", "ElasticTrainer|update",
                                             "gluon.Trainer|step", "gluon.Trainer|update"]
        for pairs in result["samples"].values():
            assert len(pairs) == 2 and all(cpu > 0 and wall > 0 for cpu, wall in pairs)
