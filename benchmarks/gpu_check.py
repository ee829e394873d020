"""GPU check: ElasticTrainer against gluon.Trainer on one NVIDIA GPU, from a bare machine.

    python3 benchmarks/gpu_check.py              # one NVIDIA GPU, package registries: ~8 minutes
    python3 benchmarks/gpu_check.py --dry-run    # the same path on CPU at a tiny size (~30 s)

What it does, in a bounded time (``--budget``, 480 s by default, set-up included):

1. **Set-up** (skipped by ``--dry-run``, which prints the commands and uses the running Python):
   a virtual environment of its own (``--venv``, outside the repository), ``pip install`` of the
   MXNet 1.9.1 CUDA 11 wheel (``--mxnet-package``, default ``mxnet-cu117``), ``numpy<1.24`` and
   GluonCV, and, in the background while the measurements run, Horovod 0.28.1 built against that
   wheel (Gloo, CPU operations: one GPU needs no NCCL). The repository is put on ``PYTHONPATH``.
2. **Throughput**: GluonCV's ResNet-50 v1b on synthetic data (fixed random images and labels on the
   device, so no data loading is timed), ``gluon.Trainer`` against ``ElasticTrainer`` (local
   backend), for ``sgd`` and ``nag`` with momentum, in float32 and in float16 (float32 master
   weights, ``multi_precision``); one model per dtype, trained by each trainer in turn. Each pair
   is timed in alternating rounds so that drifting clocks hit both alike; images/s is the median
   over rounds. On CPU (``--dry-run``) MXNet has no float16
   GEMM, so the float16 variants only run the cast and the multi-precision updates (no forward or
   backward) and report no images/s.
3. **Commit cost**: :meth:`gluon_elastic.state.ElasticState.commit` (the device-to-host copy of the
   parameters, momentum and float32 masters) against the step time, as a share of training time at
   the default ``--commit-interval`` of 20 steps.
4. **Emulated world change 8 -> 32**: :class:`gluon_elastic.emulate.EmulatedWorkers` runs every
   virtual worker's per-worker batch on the GPU; the trainer sees the world go from 8 to 32 and
   ramps the LR (Dynamic SGD, ``ramp_per_k=1``: T = 4 iterations). Per step: world, global batch,
   LR, seconds.
5. **Horovod** (when its build finished in time): ``horovodrun -np 1`` runs ElasticTrainer on the
   Horovod backend and times a commit with its membership check; on the GPU when Horovod has NCCL,
   else (the set-up builds Gloo only) on the CPU at the dry run's size.

Results go to ``--out`` (``gpu_check.json`` and ``gpu_check.md``) and to standard output. A
failure of one part (a CUDA 11 wheel that cannot run on a newer GPU, a Horovod build without a
compiler) is reported with its error and the other parts go on; the exit code is 0 when the
throughput part ran, 1 otherwise.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "gluon_elastic", "gpu_check_venv")
HOROVOD_ENV = {"HOROVOD_WITH_MXNET": "1", "HOROVOD_WITH_GLOO": "1", "HOROVOD_WITHOUT_MPI": "1",
               "HOROVOD_WITHOUT_TENSORFLOW": "1", "HOROVOD_WITHOUT_PYTORCH": "1"}
# Sizes of a real run and of the dry run. The dry run keeps the model and the factor of the world
# change (x4) and shrinks everything else.
FULL = {"model": "resnet50_v1b", "image_size": 224, "classes": 1000, "batch": 64,
        "round_seconds": 6.0, "rounds": 2, "warmup": 5, "worlds": (8, 32), "emulated_batch": 32,
        "commit_repeats": 5}
DRY = {"model": "resnet50_v1b", "image_size": 32, "classes": 10, "batch": 2,
       "round_seconds": 0.0, "rounds": 1, "warmup": 1, "worlds": (1, 4), "emulated_batch": 2,
       "commit_repeats": 1}
MIN_TIMED_STEPS = 2
COMMIT_INTERVAL = 20


# -------------------------------------------------------------------------------------- set-up
def default_python():
    """The newest of python3.11 ... python3.8 on PATH, else this interpreter.

    numpy<1.24, which MXNet 1.9.1 needs, has no wheels past Python 3.11.
    """
    for name in ("python3.11", "python3.10", "python3.9", "python3.8"):
        path = shutil.which(name)
        if path:
            return path
    return sys.executable


def install_commands(venv, mxnet_package, python=None):
    """The commands of the set-up, in order: ``[(name, argv, extra environment, background)]``."""
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--progress-bar", "off"]
    return [
        ("venv", [python or sys.executable, "-m", "venv", venv], {}, False),
        ("mxnet", pip + ["%s==1.9.1" % mxnet_package, "numpy>=1.21,<1.24",
                         "gluoncv==0.10.5.post0", "wheel", "psutil", "pyyaml", "cloudpickle",
                         "packaging", "cmake"], {}, False),
        # Built against the installed wheel, hence no build isolation.
        ("horovod", pip + ["--no-build-isolation", "horovod==0.28.1"], dict(HOROVOD_ENV), True),
    ]


def set_up(args, deadline, log):
    """Create the venv and install; returns ``(python, horovod Popen or None, report)``."""
    report = {"commands": []}
    horovod = None
    for name, argv, env, background in install_commands(args.venv, args.mxnet_package,
                                                        args.python):
        if name == "venv" and os.path.exists(os.path.join(args.venv, "bin", "python")):
            continue
        entry = {"name": name, "command": " ".join(argv)}
        report["commands"].append(entry)
        log("set-up: %s" % entry["command"])
        full_env = dict(os.environ, **env)
        if background:
            log_path = os.path.join(args.venv, "horovod_build.log")
            entry["log"] = log_path
            with open(log_path, "w") as fout:
                horovod = subprocess.Popen(argv, env=full_env, stdout=fout,
                                           stderr=subprocess.STDOUT)
            continue
        tic = time.time()
        try:
            proc = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            entry.update(ok=False, error="timed out", seconds=time.time() - tic)
            return None, None, report
        entry.update(ok=proc.returncode == 0, seconds=round(time.time() - tic, 1))
        if proc.returncode != 0:
            entry["error"] = (proc.stdout + proc.stderr)[-2000:]
            return None, None, report
    return os.path.join(args.venv, "bin", "python"), horovod, report


# ------------------------------------------------------------------------------------ measuring
def _context(device):
    import mxnet as mx

    if device == "gpu":
        if mx.context.num_gpus() < 1:
            raise RuntimeError("MXNet sees no GPU (mx.context.num_gpus() == 0)")
        return mx.gpu(0)
    return mx.cpu()


def _build(sizes, ctx, dtype, seed=0):
    import mxnet as mx
    from gluoncv import model_zoo

    mx.random.seed(seed)
    net = model_zoo.get_model(sizes["model"], pretrained=False, classes=sizes["classes"])
    net.initialize(mx.init.MSRAPrelu(), ctx=ctx)
    net(mx.nd.zeros((1, 3, sizes["image_size"], sizes["image_size"]), ctx=ctx))
    if dtype != "float32":
        net.cast(dtype)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def _synthetic(sizes, ctx, dtype, batch):
    import mxnet as mx

    mx.random.seed(1)
    data = mx.nd.random.uniform(-1, 1, shape=(batch, 3, sizes["image_size"], sizes["image_size"]),
                                ctx=ctx).astype(dtype)
    label = mx.nd.random.randint(0, sizes["classes"], shape=(batch,), ctx=ctx).astype("float32")
    return data, label


def _make_trainer(kind, net, optimizer, dtype, batch):
    from mxnet import gluon

    from gluon_elastic import ElasticTrainer

    params = {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4,
              "multi_precision": dtype == "float16"}
    if kind == "gluon.Trainer":
        return gluon.Trainer(net.collect_params(), optimizer, params, kvstore=None)
    return ElasticTrainer(net.collect_params(), optimizer, params, kvstore="local",
                          local_batch_size=batch)


def _step_function(net, trainer, data, label, batch, compute):
    """One training step; with ``compute=False`` (float16 on CPU) only the update runs."""
    from mxnet import autograd, gluon

    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trained = [param for param in net.collect_params().values() if param.grad_req != "null"]
    if not compute:
        for param in trained:
            param.grad()[:] = 1e-3

    def step():
        if compute:
            with autograd.record():
                loss = loss_fn(net(data).astype("float32", copy=False), label)
            loss.backward()
        else:
            # What backward marks on each weight: the trainers refuse (or skip) stale gradients.
            for param in trained:
                param.data()._fresh_grad = True  # pylint: disable=protected-access
        trainer.step(batch)
    return step


def _timed_round(step, batch, seconds, min_steps):
    import mxnet as mx

    mx.nd.waitall()
    tic = time.perf_counter()
    steps = 0
    while steps < min_steps or time.perf_counter() - tic < seconds:
        step()
        steps += 1
        if steps % 4 == 0:  # keep the engine's queue short so the time bound holds
            mx.nd.waitall()
    mx.nd.waitall()
    elapsed = time.perf_counter() - tic
    return steps * batch / elapsed, elapsed / steps


def measure_throughput(sizes, ctx, deadline, log):
    """Images/s of every (dtype, optimizer, trainer); returns ``(rows, nets)``."""
    compute16 = ctx.device_type == "gpu"
    rows, kept = [], {}
    for dtype in ("float32", "float16"):
        # One model per dtype, trained by every trainer in turn: what is timed is the step, and
        # building and compiling ResNet-50 eight times would cost more than the timed rounds.
        net = _build(sizes, ctx, dtype)
        for optimizer in ("sgd", "nag"):
            if time.time() > deadline:
                rows.append({"dtype": dtype, "optimizer": optimizer, "skipped": "out of time"})
                continue
            compute = dtype == "float32" or compute16
            data, label = _synthetic(sizes, ctx, dtype, sizes["batch"])
            variants = {}
            for kind in ("gluon.Trainer", "ElasticTrainer"):
                trainer = _make_trainer(kind, net, optimizer, dtype, sizes["batch"])
                step = _step_function(net, trainer, data, label, sizes["batch"], compute)
                for _ in range(sizes["warmup"]):
                    step()
                variants[kind] = {"step": step, "rates": [], "step_seconds": []}
                if kind == "ElasticTrainer":
                    kept[(dtype, optimizer)] = (net, trainer, step)
            for _ in range(sizes["rounds"]):
                for kind, variant in variants.items():
                    rate, seconds = _timed_round(variant["step"], sizes["batch"],
                                                 sizes["round_seconds"], MIN_TIMED_STEPS)
                    variant["rates"].append(rate)
                    variant["step_seconds"].append(seconds)
            row = {"dtype": dtype, "optimizer": optimizer, "compute": compute}
            for kind, variant in variants.items():
                row[kind] = {"images_per_second": statistics.median(variant["rates"]),
                             "step_seconds": statistics.median(variant["step_seconds"]),
                             "rounds": len(variant["rates"])}
            row["ratio"] = row["ElasticTrainer"]["images_per_second"] / \
                row["gluon.Trainer"]["images_per_second"]
            if not compute:
                row["note"] = "no float16 GEMM on CPU: update only, images/s not comparable"
            log("throughput %s %s: gluon.Trainer %.1f img/s, ElasticTrainer %.1f img/s (x%.3f)"
                % (dtype, optimizer, row["gluon.Trainer"]["images_per_second"],
                   row["ElasticTrainer"]["images_per_second"], row["ratio"]))
            rows.append(row)
    return rows, kept


def measure_commit(kept, log, repeats):
    """Seconds of ``ElasticState.commit()`` for the float32 and float16 sgd trainers."""
    import mxnet as mx

    from gluon_elastic.data import ElasticSampler
    from gluon_elastic.state import ElasticState

    rows = []
    for (dtype, optimizer), (net, trainer, step) in sorted(kept.items()):
        if optimizer != "sgd":
            continue
        state = ElasticState(net, trainer, ElasticSampler(1000), epoch=0)
        times = []
        for _ in range(repeats):
            step()
            mx.nd.waitall()
            tic = time.perf_counter()
            state.commit()
            times.append(time.perf_counter() - tic)
        step_times = []
        for _ in range(repeats):
            mx.nd.waitall()
            tic = time.perf_counter()
            step()
            mx.nd.waitall()
            step_times.append(time.perf_counter() - tic)
        commit, step_seconds = statistics.median(times), statistics.median(step_times)
        share = commit / (COMMIT_INTERVAL * step_seconds + commit)
        num_values = sum(p.data().size for p in net.collect_params().values())
        rows.append({"dtype": dtype, "commit_seconds": commit, "step_seconds": step_seconds,
                     "share_at_interval_%d" % COMMIT_INTERVAL: share,
                     "parameters": int(num_values)})
        log("commit %s: %.3f s (step %.3f s): %.1f %% of training time every %d steps"
            % (dtype, commit, step_seconds, 100 * share, COMMIT_INTERVAL))
    return rows


def measure_world_change(sizes, ctx, log):
    """Emulated ``worlds[0] -> worlds[1]`` change: one row per step."""
    import mxnet as mx
    from mxnet import gluon

    from gluon_elastic import ElasticTrainer
    from gluon_elastic.backends import LocalBackend
    from gluon_elastic.emulate import EmulatedWorkers

    small, large = sizes["worlds"]
    batch = sizes["emulated_batch"]
    net = _build(sizes, ctx, "float32")
    backend = LocalBackend(None, world_size=small)
    trainer = ElasticTrainer(net.collect_params(), "nag",
                             {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4},
                             kvstore=backend, local_batch_size=batch, ramp_per_k=1)
    workers = EmulatedWorkers(net.collect_params())
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data, label = _synthetic(sizes, ctx, "float32", batch * large)
    ramp = trainer.transition.ramp_length(large / small)
    rows = []
    plan = [small] * 2 + [large] * (ramp + 2)
    for number, world_size in enumerate(plan):
        backend.set_world_size(world_size)
        shards = [(data[r * batch:(r + 1) * batch], label[r * batch:(r + 1) * batch])
                  for r in range(world_size)]
        mx.nd.waitall()
        tic = time.perf_counter()
        workers.forward_backward(lambda _rank, shard: loss_fn(net(shard[0]), shard[1]), shards)
        trainer.step()
        mx.nd.waitall()
        seconds = time.perf_counter() - tic
        rows.append({"iteration": number, "world_size": world_size,
                     "global_batch_size": trainer.global_batch_size,
                     "lr": float(trainer.optimizer.lr), "seconds": seconds,
                     "images_per_second": world_size * batch / seconds})
    log("emulated world change %d -> %d: LR %s" % (small, large, " ".join(
        "%.4g" % row["lr"] for row in rows)))
    return {"from": small, "to": large, "ramp_iterations": ramp, "steps": rows}


def measure(args):
    """The measuring part (runs in the set-up's Python); writes a JSON report to ``args.report``."""
    sizes = dict(DRY if args.dry_run else FULL)
    deadline = args.deadline
    out = {"sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
           "errors": {}}

    def log(text):
        print("[gpu_check] %s" % text, flush=True)

    try:
        import mxnet as mx

        ctx = _context("cpu" if args.dry_run else "gpu")
        out["mxnet"] = mx.__version__
        out["context"] = str(ctx)
        if ctx.device_type == "gpu":
            out["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                 "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except Exception as err:  # the accepted outcome on GPUs newer than the CUDA 11 wheels
        out["errors"]["context"] = "%s: %s" % (type(err).__name__, err)
        _write_json(args.report, out)
        return 1
    kept = {}
    out["seconds"] = {}
    for name, part in (("throughput", lambda: measure_throughput(sizes, ctx, deadline, log)),
                       ("commit", lambda: measure_commit(kept, log, sizes["commit_repeats"])),
                       ("world_change", lambda: measure_world_change(sizes, ctx, log))):
        if time.time() > deadline:
            out["errors"][name] = "skipped: out of time"
            continue
        tic = time.time()
        try:
            result = part()
        except Exception as err:  # report and go on: the other parts still tell something
            out["errors"][name] = "%s: %s" % (type(err).__name__, str(err).strip()[:2000])
            log("%s failed: %s" % (name, out["errors"][name]))
            continue
        finally:
            out["seconds"][name] = round(time.time() - tic, 2)
        if name == "throughput":
            result, kept = result
        out[name] = result
        _write_json(args.report, out)
    _write_json(args.report, out)
    return 0 if "throughput" in out else 1


def measure_horovod(args):
    """Under ``horovodrun -np 1``: ElasticTrainer steps on the Horovod backend and a commit."""
    import horovod.mxnet as hvd
    import mxnet as mx

    from gluon_elastic.data import ElasticSampler
    from gluon_elastic.state import ElasticState

    hvd.init()
    sizes = dict(DRY if args.dry_run else FULL)
    # Built without NCCL (the set-up builds Gloo only), Horovod reduces host arrays alone: the
    # part then runs on the CPU at the dry run's size, which still checks the build and a commit.
    on_gpu = not args.dry_run and hvd.nccl_built()
    if not on_gpu:
        sizes = dict(DRY)
    ctx = _context("gpu" if on_gpu else "cpu")
    net = _build(sizes, ctx, "float32")
    from gluon_elastic import ElasticTrainer

    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4},
                             kvstore="horovod", local_batch_size=sizes["batch"])
    data, label = _synthetic(sizes, ctx, "float32", sizes["batch"])
    step = _step_function(net, trainer, data, label, sizes["batch"], True)
    for _ in range(sizes["warmup"]):
        step()
    rate, step_seconds = _timed_round(step, sizes["batch"], sizes["round_seconds"],
                                      MIN_TIMED_STEPS)
    state = ElasticState(net, trainer, ElasticSampler(1000), epoch=0)
    mx.nd.waitall()
    tic = time.perf_counter()
    state.commit()
    commit = time.perf_counter() - tic
    _write_json(args.report, {"world_size": hvd.size(), "context": str(ctx),
                              "images_per_second": rate, "step_seconds": step_seconds,
                              "commit_seconds": commit})
    hvd.shutdown()
    return 0


# -------------------------------------------------------------------------------------- report
def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as fout:
        json.dump(value, fout, indent=1, sort_keys=True)
    os.replace(tmp, path)


def render_markdown(result):
    """The report as Markdown (tables of throughput, commit cost, world change)."""
    lines = ["Command: `python3 benchmarks/gpu_check.py%s`  " % (" --dry-run" if result["dry_run"]
                                                               else ""),
             "Machine: %s; context %s; MXNet %s. Wall time %.0f s." % (
                 result.get("gpu") or result["machine"], result.get("context", "none"),
                 result.get("mxnet", "not installed"), result["wall_seconds"]), ""]
    sizes = result.get("sizes", {})
    if result.get("throughput"):
        lines += ["**Throughput**: %s, %d px, per-worker batch %d, synthetic data; median images/s "
                  "over %d rounds." % (sizes.get("model"), sizes.get("image_size", 0),
                                       sizes.get("batch", 0), sizes.get("rounds", 0)), "",
                  "| dtype | optimizer | gluon.Trainer img/s | ElasticTrainer img/s | ratio |",
                  "|---|---|---|---|---|"]
        for row in result["throughput"]:
            if "skipped" in row:
                lines.append("| %s | %s | skipped (%s) | | |" % (row["dtype"], row["optimizer"],
                                                                 row["skipped"]))
                continue
            note = "" if row["compute"] else " (update only)"
            lines.append("| %s | %s | %.1f%s | %.1f%s | %.3f |" % (
                row["dtype"], row["optimizer"], row["gluon.Trainer"]["images_per_second"], note,
                row["ElasticTrainer"]["images_per_second"], note, row["ratio"]))
        lines.append("")
    if result.get("commit"):
        lines += ["**Commit** (`ElasticState.commit()`, device to host):", "",
                  "| dtype | parameters | commit s | step s | share every %d steps |"
                  % COMMIT_INTERVAL, "|---|---|---|---|---|"]
        for row in result["commit"]:
            lines.append("| %s | %d | %.4f | %.4f | %.2f %% |" % (
                row["dtype"], row["parameters"], row["commit_seconds"], row["step_seconds"],
                100 * row["share_at_interval_%d" % COMMIT_INTERVAL]))
        lines.append("")
    change = result.get("world_change")
    if change:
        lines += ["**Emulated world change %d -> %d** (nag, Dynamic SGD ramp of %d iterations):"
                  % (change["from"], change["to"], change["ramp_iterations"]), "",
                  "| iteration | world | global batch | LR | seconds | images/s |",
                  "|---|---|---|---|---|---|"]
        for row in change["steps"]:
            lines.append("| %d | %d | %d | %.5g | %.3f | %.1f |" % (
                row["iteration"], row["world_size"], row["global_batch_size"], row["lr"],
                row["seconds"], row["images_per_second"]))
        lines.append("")
    horovod = result.get("horovod")
    if horovod and "images_per_second" in horovod:
        lines += ["**Horovod** (`horovodrun -np %d`, %s): ElasticTrainer %.1f img/s, commit %.4f s."
                  % (horovod["world_size"], horovod.get("context", "?"),
                     horovod["images_per_second"], horovod["commit_seconds"]), ""]
    for name, error in sorted(result.get("errors", {}).items()):
        lines.append("- %s: %s" % (name, error.replace("\n", " ")[:500]))
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, no installation (the running Python's packages)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for everything, set-up included (default: %(default)s)")
    parser.add_argument("--venv", default=DEFAULT_VENV,
                        help="venv of the check (default: %(default)s)")
    parser.add_argument("--mxnet-package", default="mxnet-cu117",
                        help="MXNet 1.9.1 CUDA wheel: mxnet-cu112 ... mxnet-cu117 "
                             "(default: %(default)s)")
    parser.add_argument("--python", default=None,
                        help="interpreter of the venv (default: the newest python3.11 ... "
                             "python3.8 on PATH)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--no-horovod", dest="horovod", action="store_false",
                        help="skip the Horovod build and part")
    parser.add_argument("--phase", default="all", choices=("all", "measure", "horovod"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run_part(python, phase, args, deadline, env, launcher=()):
    """Run a measuring phase in ``python``; returns ``(report or None, exit code, output)``."""
    fd, report = tempfile.mkstemp(prefix="gpu_check_", suffix=".json")
    os.close(fd)
    os.remove(report)
    argv = list(launcher) + [python, os.path.abspath(__file__), "--phase", phase,
                             "--deadline", str(deadline), "--report", report]
    if args.dry_run:
        argv.append("--dry-run")
    try:
        proc = subprocess.run(argv, env=env, timeout=max(1.0, deadline - time.time() + 30),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        code, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        code, output = 124, (err.stdout or b"").decode() if isinstance(err.stdout, bytes) \
            else (err.stdout or "")
    sys.stdout.write(output)
    value = None
    if os.path.exists(report):
        with open(report) as fin:
            value = json.load(fin)
        os.remove(report)
    return value, code, output


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    if args.python is None:
        args.python = default_python()
    if args.phase == "measure":
        return measure(args)
    if args.phase == "horovod":
        return measure_horovod(args)
    start = time.time()
    deadline = start + args.budget

    def log(text):
        print("[gpu_check] %s" % text, flush=True)

    result = {"dry_run": args.dry_run, "machine": "%s %s, %d CPUs" % (
        platform.system(), platform.machine(), os.cpu_count() or 0), "errors": {}}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("MXNET_CUDNN_AUTOTUNE_DEFAULT", "0")  # autotuning eats the time budget
    horovod_build = None
    if args.dry_run:
        python = sys.executable
        result["setup"] = {"commands": [{"name": name, "command": " ".join(argv), "dry_run": True}
                                        for name, argv, _, _ in install_commands(
                                            args.venv, args.mxnet_package, args.python)]}
        for entry in result["setup"]["commands"]:
            log("set-up (dry run, not executed): %s" % entry["command"])
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    else:
        if shutil.which("nvidia-smi") is None:
            log("nvidia-smi not found: this check needs an NVIDIA GPU and its driver")
        os.makedirs(os.path.dirname(args.venv), exist_ok=True)
        # The install gets at most half the budget; the measurements need the rest.
        python, horovod_build, result["setup"] = set_up(args, start + args.budget / 2, log)
        if not args.horovod and horovod_build is not None:
            horovod_build.kill()
            horovod_build = None
        if python is None:
            result["errors"]["setup"] = "installation failed; see setup.commands"
    if python is not None:
        # Leave a minute for the Horovod part and the report.
        measured, code, _ = _run_part(python, "measure", args, deadline - 60, env)
        result.update({k: v for k, v in (measured or {}).items() if k != "errors"})
        result["errors"].update((measured or {}).get("errors", {}))
        if measured is None:
            result["errors"]["measure"] = "exit code %d without a report" % code
        if args.horovod:
            tic = time.time()
            result["horovod"] = run_horovod_part(args, python, horovod_build, deadline, env, log)
            result.setdefault("seconds", {})["horovod"] = round(time.time() - tic, 2)
    result["wall_seconds"] = time.time() - start
    os.makedirs(args.out, exist_ok=True)
    name = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    _write_json(os.path.join(args.out, name + ".json"), result)
    markdown = render_markdown(result)
    with open(os.path.join(args.out, name + ".md"), "w") as fout:
        fout.write(markdown)
    print(markdown)
    log("wrote %s.json and %s.md under %s in %.0f s" % (name, name, args.out,
                                                       result["wall_seconds"]))
    return 0 if result.get("throughput") else 1


def run_horovod_part(args, python, build, deadline, env, log):
    """Wait (within the budget) for the Horovod build, then run the Horovod part."""
    if build is not None:
        try:
            build.wait(timeout=max(0.0, deadline - 45 - time.time()))
        except subprocess.TimeoutExpired:
            build.kill()
            build.wait()
            return {"error": "the Horovod build did not finish within the budget (log: %s)"
                             % os.path.join(args.venv, "horovod_build.log")}
        if build.returncode != 0:
            return {"error": "the Horovod build failed with exit code %d (log: %s)"
                             % (build.returncode, os.path.join(args.venv, "horovod_build.log"))}
    horovodrun = os.path.join(os.path.dirname(python), "horovodrun")
    if not os.path.exists(horovodrun):
        return {"error": "horovodrun not found next to %s" % python}
    log("horovod: horovodrun -np 1")
    value, code, output = _run_part(python, "horovod", args, deadline, env, launcher=(
        horovodrun, "--gloo", "-np", "1", "-H", "localhost:1", "--network-interface", "lo"))
    if value is None:
        return {"error": "exit code %d: %s" % (code, output.strip()[-500:])}
    return value


if __name__ == "__main__":
    sys.exit(main())
