"""What restart elasticity on KVStore costs: resize latency and the price of saving.

Regenerate (several minutes on a 2-core CPU):

    .venv/bin/python benchmarks/kvstore_restart.py resize --schedule 2,1,2,1,2
    .venv/bin/python benchmarks/kvstore_restart.py save-cost

``resize`` runs GluonCV's ResNet-50 v1b (pretrained=False, 1000 classes: 25.6 M parameters, SGD with
momentum, so the saved state is 25.6 M parameters + 25.6 M momentum, about 205 MB) as a
``dist_sync`` job under :class:`gluon_elastic.supervisor.Supervisor`, with a membership that walks
through ``--schedule`` (worker counts). After ``--steps`` steps of each generation, discovery
announces the next world; each relaunch is split into

* **stop**: from the save request to every process of the old group gone (reach the next step
  boundary, agree through the KVStore, rank 0 saves, processes and servers exit);
* **relaunch**: from spawning a worker to ``import mxnet`` done (process start and MXNet import);
* **init**: GluonCV import, model construction and the KVStore init of the 25.6 M parameters;
* **load**: :meth:`gluon_elastic.restart.RestartAgent.restore` (read, SHA-256, unpickle, set
  parameters, load optimizer and elastic state);
* **first step**: forward, backward, push/pull and update of the first step after the load
  (``--image-size`` pixels, ``--local-batch-size`` images per worker);

and the total from the save request to the end of that first step. ``save-cost`` runs one process
with the same model at ImageNet size (224 pixels, ``--local-batch-size`` 32 by default), measures a
training step and a checkpoint save (serialisation in the loop, then checksum, write and fsync in
the writer thread), and gives the fraction of training time that saving at the default commit
interval (20 steps) costs, before the overhead budget of :class:`RestartAgent` (1 %) would thin
the saves out. Results go to ``kvstore_restart_<mode>.json`` under ``--out``; medians over the
relaunches (or repetitions) are printed.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

WORKER_STARTED = time.time()   # before any heavy import: what "relaunch" measures ends later

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --------------------------------------------------------------------------------------- model
def resnet50_job(args, kvstore):
    """ResNet-50 v1b with an ElasticTrainer (SGD with momentum) and one step on random images.

    Returns
    -------
    (net, trainer, step)
        ``step()`` trains one step, waits for it, and returns its ``(start, end)`` times.
    """
    import mxnet as mx
    from mxnet import autograd, gluon
    from gluoncv.model_zoo import resnet50_v1b

    from gluon_elastic import ElasticTrainer

    net = resnet50_v1b(pretrained=False)
    net.initialize(mx.init.Xavier())
    shape = (args.local_batch_size, 3, args.image_size, args.image_size)
    net(mx.nd.zeros(shape))
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4},
                             kvstore=kvstore, local_batch_size=args.local_batch_size)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.nd.random.uniform(shape=shape)
    label = mx.nd.array([i % 1000 for i in range(args.local_batch_size)])

    def step():
        tic = time.time()
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(args.local_batch_size)
        mx.nd.waitall()
        return tic, time.time()

    return net, trainer, step


# --------------------------------------------------------------------------------------- worker
def run_worker(args):
    """One worker of the resize benchmark (run by the supervisor)."""
    import mxnet as mx
    t_mx = time.time()

    from gluon_elastic import backends
    from gluon_elastic.restart import RestartAgent, generation, launch_time
    from gluon_elastic.state import ElasticState

    gen = generation()
    backend = backends.create("dist_sync")
    net, trainer, step = resnet50_job(args, backend)
    state = ElasticState(net, trainer)
    agent = RestartAgent(backend, state, commit_interval=None)
    mx.nd.waitall()
    t_init = time.time()
    tic = time.time()
    loaded = agent.restore()
    mx.nd.waitall()
    load_seconds = time.time() - tic
    rank = trainer.rank
    record = {"gen": gen, "rank": rank, "world": trainer.world_size, "launch_time": launch_time(),
              "started": WORKER_STARTED, "t_mx": t_mx, "t_init": t_init,
              "restored_step": loaded.step if loaded else None, "load_seconds": load_seconds,
              "steps": []}
    steps_here = 0
    while True:
        record["steps"].append(list(step()))
        steps_here += 1
        if rank == 0 and steps_here == args.steps:
            open(os.path.join(args.log_dir, "gen-%d.ready" % gen), "w").close()
        if gen == args.last_generation and steps_here >= args.steps:
            break
        tic = time.time()
        if agent.after_step(trainer.iteration):
            record["stop_save_seconds"] = time.time() - tic
            break
    with open(os.path.join(args.log_dir, "g%d-r%d.json" % (gen, rank)), "w") as fout:
        json.dump(record, fout)
    mx.nd.waitall()
    backend.barrier()
    return 0


# ---------------------------------------------------------------------------------------- resize
def run_resize(args):
    from gluon_elastic.supervisor import Supervisor

    worlds = [int(w) for w in args.schedule.split(",")]
    if any(a == b for a, b in zip(worlds, worlds[1:])):
        raise SystemExit("--schedule: consecutive worker counts must differ, got %s" % args.schedule)
    work = tempfile.mkdtemp(prefix="kvstore_restart_")
    log_dir = os.path.join(work, "logs")
    os.makedirs(log_dir)

    def discovery():
        ready = [g for g in range(len(worlds)) if os.path.exists(
            os.path.join(log_dir, "gen-%d.ready" % g))]
        index = min(len(worlds) - 1, (max(ready) + 1) if ready else 0)
        return [("localhost", worlds[index])]

    command = [sys.executable, os.path.abspath(__file__), "worker", "--log-dir", log_dir,
               "--steps", str(args.steps), "--last-generation", str(len(worlds) - 1),
               "--image-size", str(args.image_size),
               "--local-batch-size", str(args.local_batch_size)]
    output = open(os.path.join(work, "supervisor.out"), "w")
    supervisor = Supervisor(command, discovery=discovery, checkpoint_dir=os.path.join(work, "ckpt"),
                            discovery_interval=0.5, progress_timeout=600, start_timeout=600,
                            max_restarts=0, env={"PYTHONPATH": ROOT}, output=output)
    code = supervisor.run()
    output.close()
    if code != 0:
        raise SystemExit("the job failed (exit %d); see %s" % (code, output.name))
    relaunches = []
    for gen in range(1, len(worlds)):
        with open(os.path.join(log_dir, "g%d-r0.json" % gen)) as fin:
            new = json.load(fin)
        with open(os.path.join(log_dir, "g%d-r0.json" % (gen - 1))) as fin:
            old = json.load(fin)
        before = supervisor.history[gen - 1]
        first_step = new["steps"][0]
        relaunches.append({
            "from_world": worlds[gen - 1], "to_world": worlds[gen],
            "stop_seconds": before["stopped"] - before["save_requested"],
            "stop_save_seconds": old.get("stop_save_seconds"),
            "supervisor_gap_seconds": supervisor.history[gen]["launched"] - before["stopped"],
            "relaunch_seconds": new["t_mx"] - new["launch_time"],
            "init_seconds": new["t_init"] - new["t_mx"],
            "load_seconds": new["load_seconds"],
            "first_step_seconds": first_step[1] - first_step[0],
            "steady_step_seconds": statistics.median(b - a for a, b in new["steps"][1:])
            if len(new["steps"]) > 1 else None,
            "total_seconds": first_step[1] - before["save_requested"],
        })
    keys = ["stop_seconds", "stop_save_seconds", "relaunch_seconds", "init_seconds",
            "load_seconds", "first_step_seconds", "total_seconds"]
    summary = {key: statistics.median(r[key] for r in relaunches) for key in keys}
    result = {"mode": "resize", "schedule": worlds, "image_size": args.image_size,
              "local_batch_size": args.local_batch_size, "relaunches": relaunches,
              "median": summary}
    _write(args, "resize", result)
    print("relaunches:")
    for r in relaunches:
        print("  %d -> %d: " % (r["from_world"], r["to_world"]) + ", ".join(
            "%s %.2f" % (key.replace("_seconds", ""), r[key]) for key in keys))
    print("median: " + ", ".join("%s %.2f s" % (key.replace("_seconds", ""), value)
                                 for key, value in summary.items()))
    return 0


# -------------------------------------------------------------------------------------- save cost
def run_save_cost(args):
    from gluon_elastic.restart import RestartAgent
    from gluon_elastic.state import ElasticState

    net, trainer, timed_step = resnet50_job(args, "device")
    state = ElasticState(net, trainer)
    work = tempfile.mkdtemp(prefix="kvstore_save_cost_")
    agent = RestartAgent(trainer.backend, state, checkpoint_dir=work, commit_interval=None)

    def step():
        tic, toc = timed_step()
        return toc - tic

    step()  # warm-up (memory allocation, MKLDNN layouts)
    step_seconds = [step() for _ in range(args.steps)]
    saves = []
    for index in range(args.repeats):
        foreground = agent.save_foreground_seconds
        written = agent.save_write_seconds
        tic = time.time()
        agent.save(index + 1, blocking=False)
        in_loop = time.time() - tic
        # The writer runs beside training; time one step alongside it to see the slow-down.
        step_with_writer = step()
        agent.finish()
        saves.append({"in_loop_seconds": agent.save_foreground_seconds - foreground,
                      "writer_seconds": agent.save_write_seconds - written,
                      "step_with_writer_seconds": step_with_writer, "wall_in_loop": in_loop})
    size = os.path.getsize(agent.checkpoints.path(args.repeats))
    step_median = statistics.median(step_seconds)
    in_loop = statistics.median(s["in_loop_seconds"] for s in saves)
    writer = statistics.median(s["writer_seconds"] for s in saves)
    # Cost charged to training: the serialisation in the loop, plus the whole writer time (an
    # upper bound: on 2 cores the writer competes with training for CPU).
    interval = args.commit_interval
    fraction = (in_loop + writer) / (interval * step_median)
    result = {"mode": "save-cost", "image_size": args.image_size,
              "local_batch_size": args.local_batch_size, "checkpoint_bytes": size,
              "step_seconds": step_seconds, "saves": saves, "median_step_seconds": step_median,
              "median_in_loop_seconds": in_loop, "median_writer_seconds": writer,
              "commit_interval": interval, "save_fraction_of_training": fraction}
    _write(args, "save-cost", result)
    print("checkpoint %.1f MB; step %.2f s (median of %d); save: %.2f s in the loop + %.2f s in "
          "the writer (median of %d); every %d steps: %.2f %% of training time"
          % (size / 1e6, step_median, len(step_seconds), in_loop, writer, len(saves), interval,
             100 * fraction))
    return 0


def _write(args, mode, result):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "kvstore_restart_%s.json" % mode)
    with open(path, "w") as fout:
        json.dump(result, fout, indent=1)
    print("wrote %s" % path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    resize = sub.add_parser("resize", help="restart resize latency")
    resize.add_argument("--schedule", default="2,1,2,1,2", help="worker counts, in order")
    resize.add_argument("--steps", type=int, default=2, help="steps per generation")
    resize.add_argument("--image-size", type=int, default=64)
    resize.add_argument("--local-batch-size", type=int, default=2)
    resize.add_argument("--out", default=DEFAULT_OUT)
    cost = sub.add_parser("save-cost", help="cost of saving at the default interval")
    cost.add_argument("--image-size", type=int, default=224)
    cost.add_argument("--local-batch-size", type=int, default=32)
    cost.add_argument("--steps", type=int, default=3, help="timed steps")
    cost.add_argument("--repeats", type=int, default=3, help="timed saves")
    cost.add_argument("--commit-interval", type=int, default=20,
                      help="steps between saves (the default of --commit-interval)")
    cost.add_argument("--out", default=DEFAULT_OUT)
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("--log-dir", required=True)
    worker.add_argument("--steps", type=int, required=True)
    worker.add_argument("--last-generation", type=int, required=True)
    worker.add_argument("--image-size", type=int, required=True)
    worker.add_argument("--local-batch-size", type=int, required=True)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return {"resize": run_resize, "save-cost": run_save_cost, "worker": run_worker}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
