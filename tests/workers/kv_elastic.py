"""Worker of the restart-elasticity tests: a tiny regression under the supervisor.

    python tests/workers/kv_elastic.py --log-dir DIR [--epochs 2 --num-samples 200 ...]

Every rank appends JSON lines to ``DIR/g<generation>-r<rank>.jsonl``: one per step (iteration
before the step, LR the step applies, world, epoch, the sample indices it trained) and, after a
restore, the step and file restored and SHA-256 digests of parameters (auxiliary included) and
momentum. Rank 0 also logs each save with the same digests, and writes ``DIR/progress`` (the
trainer's iteration) for ``kv_discovery.py``. Faults for the tests: ``--kill-at GEN:STEPS`` makes
rank 0 of generation GEN SIGKILL itself after STEPS steps of that generation (with
``--corrupt-newest`` it first truncates the newest checkpoint); ``--hang-at STEPS`` makes rank 1
of every generation stop making progress after STEPS steps.
"""
import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends
from gluon_elastic.data import ElasticSampler
from gluon_elastic.restart import RestartAgent, generation, launch_time
from gluon_elastic.state import ElasticState


def param_digest(params):
    """SHA-256 over the parameter arrays (name order), as float32 bytes."""
    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(params[name], dtype=np.float32).tobytes())
    return digest.hexdigest()


def momentum_digest(arrays):
    """SHA-256 over the momentum arrays in parameter-index order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--local-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--commit-interval", type=int, default=4)
    parser.add_argument("--keep", type=int, default=100)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--kill-at", default=None, help="GEN:STEPS")
    parser.add_argument("--corrupt-newest", action="store_true")
    parser.add_argument("--hang-at", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    gen = generation()
    rng = np.random.RandomState(0)
    features = rng.rand(args.num_samples, 6).astype(np.float32)
    targets = features.dot(rng.rand(6, 1).astype(np.float32))

    backend = backends.create("dist_sync")
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=6), gluon.nn.BatchNorm(in_channels=4),
            gluon.nn.Dense(1, in_units=4))
    net.initialize(mx.init.Xavier())
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": args.lr, "momentum": args.momentum, "wd": 1e-4},
                             kvstore=backend, local_batch_size=args.local_batch_size)
    sampler = ElasticSampler(args.num_samples, seed=1)
    state = ElasticState(net, trainer, sampler)
    # Saves at every commit interval (no overhead budget): the test knows where every file is.
    agent = RestartAgent(backend, state, commit_interval=args.commit_interval, keep=args.keep,
                         max_save_overhead=None)
    rank = trainer.rank
    log = open(os.path.join(args.log_dir, "g%d-r%d.jsonl" % (gen, rank)), "a")

    def emit(record):
        record.update({"gen": gen, "rank": rank, "pid": os.getpid(), "t": time.time()})
        log.write(json.dumps(record) + "\n")
        log.flush()

    def digests():
        return {"params": param_digest({name: p.data().asnumpy()
                                        for name, p in net.collect_params().items()}),
                "momentum": momentum_digest([a.asnumpy() for a in trainer.momentum_arrays()])}

    emit(dict(event="started", launch_time=launch_time(), world=trainer.world_size))
    print("rank %d of %d started (generation %d)" % (rank, trainer.world_size, gen), flush=True)
    loaded = agent.restore()
    if loaded is not None:
        emit(dict(event="restored", step=loaded.step, path=loaded.path, skipped=loaded.skipped,
                  iteration=trainer.iteration, world=trainer.world_size, **digests()))
    loss_fn = gluon.loss.L2Loss()
    steps_here = 0
    kill_gen, kill_steps = (int(v) for v in args.kill_at.split(":")) if args.kill_at else (-1, 0)
    for epoch in range(sampler.epoch, args.epochs):
        sampler.set_epoch(epoch)
        local_sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
        for indices, global_batch_size in sampler.iter_batches(local_sizes, rank):
            emit(dict(event="step", iteration=trainer.iteration, lr=trainer.learning_rate,
                      world=trainer.world_size, epoch=epoch, indices=indices.tolist(),
                      global_batch_size=global_batch_size))
            if len(indices):
                with autograd.record():
                    loss = loss_fn(net(mx.nd.array(features[indices])),
                                   mx.nd.array(targets[indices]))
                loss.backward()
            else:  # a short last batch left this rank nothing: it still joins the reduction
                for param in net.collect_params().values():
                    param.zero_grad()
            trainer.step(global_batch_size=global_batch_size)
            sampler.record(global_batch_size)
            steps_here += 1
            stop = agent.after_step(trainer.iteration)
            if rank == 0 and not stop and agent.last_saved_step == trainer.iteration:
                emit(dict(event="saved", step=trainer.iteration, **digests()))
            if rank == 0:
                with open(os.path.join(args.log_dir, "progress.tmp"), "w") as fout:
                    fout.write(str(trainer.iteration))
                os.replace(os.path.join(args.log_dir, "progress.tmp"),
                           os.path.join(args.log_dir, "progress"))
            if stop:
                if rank == 0:
                    emit(dict(event="stopped", step=trainer.iteration, **digests()))
                log.close()
                return 0
            if gen == kill_gen and rank == 0 and steps_here == kill_steps:
                agent.finish()
                if args.corrupt_newest:
                    newest = agent.checkpoints.path(agent.checkpoints.steps()[-1])
                    with open(newest, "r+b") as fout:
                        fout.truncate(os.path.getsize(newest) // 2)
                    emit(dict(event="corrupted", path=newest))
                emit(dict(event="killed", step=trainer.iteration))
                os.kill(os.getpid(), signal.SIGKILL)
            if args.hang_at is not None and rank == 1 and steps_here == args.hang_at:
                emit(dict(event="hang", step=trainer.iteration))
                while True:
                    time.sleep(60)
            if args.step_sleep:
                time.sleep(args.step_sleep)
    agent.finish()
    mx.nd.waitall()
    backend.barrier()
    emit(dict(event="finished", iteration=trainer.iteration))
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
