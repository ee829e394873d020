"""Worker of the AdaScale closed-form tests: known per-worker gradients on every backend.

One parameter ``w`` of 3 weights; at step ``t`` sample ``j`` of rank ``r`` has the gradient
``D[t, r, j]`` (``GRADIENTS(t)``, the same table on every rank), through the loss ``D . w``. Each
rank trains its own samples (per-worker batch 2, base batch 2, so the scale is the world size) and
prints, after every step, one JSON line with its rank, world size, step, the gain it applied and
its weights.

    python tests/workers/adascale.py BACKEND[@DEVICES] STEPS [MARKER]

BACKEND ``emulate:N`` runs N virtual workers in one process (``EmulatedWorkers``). ``@DEVICES``
puts the weights of every process on that many CPU contexts (``cpu(0)``, ``cpu(1)``...) and
splits each worker's batch over them (:func:`gluon_elastic.devices.split_and_load`); real
workers then alternate ``step()`` with ``allreduce_grads()`` + ``update()``. Every device must
hold the same weights after each step. Arguments after the second are ignored: a test appends a
marker that finds this job's processes.
"""
import json
import sys

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_elastic import ElasticTrainer, backends
from gluon_elastic.devices import split_and_load
from gluon_elastic.emulate import EmulatedWorkers

LOCAL_BATCH_SIZE, DIM, LR, MOMENTUM = 2, 3, 0.1, 0.9


def gradients(step, world_size):
    """Per-sample gradients ``[world_size, LOCAL_BATCH_SIZE, DIM]`` of ``step``: mean plus noise."""
    rng = np.random.RandomState(1000 + step)
    mean = rng.randn(DIM)
    return mean + 0.7 * rng.randn(world_size, LOCAL_BATCH_SIZE, DIM)


def main():
    backend_name, _, num_devices = sys.argv[1].partition("@")
    steps, num_devices = int(sys.argv[2]), int(num_devices or 1)
    contexts = [mx.cpu(index) for index in range(num_devices)]
    if backend_name.startswith("emulate:"):
        backend = backends.create("device", world_size=int(backend_name.split(":")[1]))
    else:
        backend = backends.create(backend_name)
    weight = gluon.Parameter("w", shape=(DIM,))
    weight.initialize(mx.init.One(), ctx=contexts)
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
            # One loss per device, on that device's part of the worker's batch.
            return [(part * weight.data(part.context).reshape(1, DIM)).sum()
                    for part, in split_and_load((shard,), contexts)]

        if emulated:
            workers.forward_backward(loss_fn, shards, batch_sizes=[LOCAL_BATCH_SIZE] * len(ranks))
            trainer.step(worker_noise=workers.worker_noise)
        else:
            with mx.autograd.record():
                losses = loss_fn(0, shards[0])
            mx.autograd.backward(losses)
            if num_devices > 1 and step % 2:
                trainer.allreduce_grads()
                trainer.update()
            else:
                trainer.step()
        copies = [data.asnumpy() for data in weight.list_data()]
        assert all((copy == copies[0]).all() for copy in copies), copies
        print(json.dumps({"rank": trainer.rank, "world_size": trainer.world_size, "step": step,
                          "gain": trainer.multiplier, "lr": trainer.optimizer.lr,
                          "schedule_progress": trainer.schedule_progress,
                          "weight": copies[0].tolist()}), flush=True)
    mx.nd.waitall()
    trainer.backend.barrier()


if __name__ == "__main__":
    main()
