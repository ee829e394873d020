"""Worker of the AdaScale closed-form tests: known per-worker gradients on every backend.

One parameter ``w`` of 3 weights; at step ``t`` sample ``j`` of rank ``r`` has the gradient
``D[t, r, j]`` (``GRADIENTS(t)``, the same table on every rank), through the loss ``D . w``. Each
rank trains its own samples (per-worker batch 2, base batch 2, so the scale is the world size) and
prints, after every step, one JSON line with its rank, world size, step, the gain it applied and
its weights.

    python tests/workers/adascale.py BACKEND STEPS [MARKER]

BACKEND ``emulate:N`` runs N virtual workers in one process (``EmulatedWorkers``). Arguments after
the second are ignored: a test appends a marker that finds this job's processes.
"""
import json
import sys

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_elastic import ElasticTrainer, backends
from gluon_elastic.emulate import EmulatedWorkers

LOCAL_BATCH_SIZE, DIM, LR, MOMENTUM = 2, 3, 0.1, 0.9


def gradients(step, world_size):
    """Per-sample gradients ``[world_size, LOCAL_BATCH_SIZE, DIM]`` of ``step``: mean plus noise."""
    rng = np.random.RandomState(1000 + step)
    mean = rng.randn(DIM)
    return mean + 0.7 * rng.randn(world_size, LOCAL_BATCH_SIZE, DIM)


def main():
    backend_name, steps = sys.argv[1], int(sys.argv[2])
    if backend_name.startswith("emulate:"):
        backend = backends.create("device", world_size=int(backend_name.split(":")[1]))
    else:
        backend = backends.create(backend_name)
    weight = gluon.Parameter("w", shape=(DIM,))
    weight.initialize(mx.init.One())
    trainer = ElasticTrainer([weight], "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE,
                             base_batch_size=LOCAL_BATCH_SIZE, scaling="adascale")
    emulated = isinstance(backend, backends.LocalBackend)
    workers = EmulatedWorkers({"w": weight}) if emulated else None
    ranks = list(range(trainer.world_size)) if emulated else [trainer.rank]
    for step in range(steps):
        table = gradients(step, trainer.world_size)
        shards = [mx.nd.array(table[rank]) for rank in ranks]

        def loss_fn(_index, shard):
            return (shard * weight.data().reshape(1, DIM)).sum()

        if emulated:
            workers.forward_backward(loss_fn, shards, batch_sizes=[LOCAL_BATCH_SIZE] * len(ranks))
            trainer.step(worker_noise=workers.worker_noise)
        else:
            with mx.autograd.record():
                loss = loss_fn(0, shards[0])
            loss.backward()
            trainer.step()
        print(json.dumps({"rank": trainer.rank, "world_size": trainer.world_size, "step": step,
                          "gain": trainer.multiplier, "lr": trainer.optimizer.lr,
                          "schedule_progress": trainer.schedule_progress,
                          "weight": weight.data().asnumpy().tolist()}), flush=True)
    mx.nd.waitall()
    trainer.backend.barrier()


if __name__ == "__main__":
    main()
