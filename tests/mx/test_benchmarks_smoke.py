"""Smoke tests of the benchmark commands: a reduced run writes well-formed outputs (not timing).

The convergence run is checked against closed-form values of its configuration: the number of
iterations each world takes, the world size and the LR the trainer applied at each change.
"""
import csv
import json
import math
import os
import shutil
import pathlib
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LR = 0.01
LOCAL_BATCH_SIZE = 16
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


@pytest.fixture(scope="module")
def convergence_out():
    out = pathlib.Path(tempfile.mkdtemp(prefix="gluon_elastic_convergence_"))
    try:
        readme = out / "README.md"
        shutil.copy(os.path.join(ROOT, "benchmarks", "README.md"), readme)
        run([PYTHON, "benchmarks/convergence.py", "--quick", "--out", str(out), "--readme",
             str(readme), "--methods", "static", "immediate", "dynamic_Tk", "--lrs", str(LR),
             "--jobs", "1"], timeout=600)
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_convergence_traces_follow_the_schedule(convergence_out):
    with open(convergence_out / "convergence.json") as fin:
        saved = json.load(fin)
    runs = {(r["config"]["schedule_name"], r["config"]["method"]): r for r in saved["runs"]}
    assert sorted(runs) == sorted((s, m) for s in ("grow16_shrink8", "shrink16")
                                  for m in ("static", "immediate", "dynamic_Tk"))
    # --quick: 320 digits, one epoch per world. Iterations per epoch = ceil(320 / (16 * world)).
    grow = runs[("grow16_shrink8", "immediate")]
    assert grow["trace"]["world_size"] == [1] * 20 + [16] * 2 + [2] * 10
    assert grow["epoch_starts"] == [0, 20, 22]
    assert grow["trace"]["global_batch_size"][20:22] == [256, 64]
    assert runs[("grow16_shrink8", "static")]["trace"]["world_size"] == [1] * 60
    assert runs[("shrink16", "static")]["trace"]["world_size"] == [16] * 4
    # Linear scaling from the base batch 16: immediate jumps to 16x at the first step of world 16;
    # Dynamic SGD (T = k = 16) starts the ramp at 1x and moves by 15/16 per step.
    assert grow["trace"]["lr"][20] == pytest.approx(16 * LR)
    assert grow["trace"]["lr"][22] == pytest.approx(2 * LR)
    dynamic = runs[("grow16_shrink8", "dynamic_Tk")]["trace"]["lr"]
    assert dynamic[20] == pytest.approx(LR)
    assert dynamic[21] == pytest.approx(LR * (1 + 15 / 16))
    # The shrink to world 2 arrives mid-ramp, at multiplier 1 + 15/16: the target 2 is still a
    # (small) growth, so a ramp of T = round(k) = 1 step starts from the multiplier in use.
    assert dynamic[22] == pytest.approx(LR * (1 + 15 / 16))
    assert dynamic[23] == pytest.approx(2 * LR)
    for run_ in saved["runs"]:
        trace = run_["trace"]
        assert len({len(values) for values in trace.values()}) == 1
        assert all(value > 0 for value in trace["loss"])
        assert all(value >= 0 for value in trace["momentum_norm"])
        assert len(run_["test_accuracy"]) == run_["config"]["epochs"]
        assert all(0.0 <= acc <= 1.0 for acc in run_["test_accuracy"])


def test_convergence_tables_csv_and_plots(convergence_out):
    with open(convergence_out / "convergence.csv") as fin:
        rows = list(csv.DictReader(fin))
    # grow16_shrink8 has two changes, shrink16 one; three methods, one LR, one seed.
    assert len(rows) == 3 * (2 + 1)
    assert {row["change_epoch"] for row in rows if row["schedule"] == "shrink16"} == {"1"}
    for row in rows:
        assert 0.0 <= float(row["final_test_accuracy"]) <= 1.0
        assert float(row["peak_loss"]) >= float(row["spike_loss"]) > 0
    table = (convergence_out / "convergence.md").read_text()
    for label in ("static world", "immediate + Goyal correction (Eq. 5)", "Dynamic SGD, T = k"):
        assert table.count("| %s |" % label) == 2  # one row per schedule
    plots = sorted(p for p in os.listdir(convergence_out) if p.endswith(".png"))
    assert plots == ["convergence_grow16_shrink8_change1_lr0.01.png",
                     "convergence_grow16_shrink8_change2_lr0.01.png",
                     "convergence_shrink16_change1_lr0.01.png"]
    for name in plots:
        with open(convergence_out / name, "rb") as fin:
            assert fin.read(8) == PNG_MAGIC
    readme = (convergence_out / "README.md").read_text()
    block = readme.split("<!-- convergence:begin")[1].split("<!-- convergence:end -->")[0]
    assert "| static world |" in block
    assert all("](%s)" % name in block for name in plots)
    assert "## Other benchmarks" in readme


def test_convergence_render_only_reproduces_the_tables(convergence_out):
    table = (convergence_out / "convergence.md").read_text()
    os.remove(convergence_out / "convergence.md")
    run([PYTHON, "benchmarks/convergence.py", "--render-only", "--out", str(convergence_out),
         "--readme", ""], timeout=300)
    assert (convergence_out / "convergence.md").read_text() == table


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
