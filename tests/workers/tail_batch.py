"""Worker of the tail-batch and gradient-clipping tests (three real processes).

A data set of 13 samples, not shuffled, where sample ``i`` has the value ``i + 1`` and the loss
``value * sum(w)``: the gradient of a sample is its value on every weight. With 3 workers and a
per-worker batch of 4, each epoch takes a global batch of 12 and then one of 1, in which ranks 1
and 2 have no samples and take part through ``step(0, global_batch_size=1)``. After every step the
worker prints one JSON line with its rank, world size, step and weights.

    python tests/workers/tail_batch.py BACKEND MODE EPOCHS [MARKER]

MODE ``step`` calls ``trainer.step``; MODE ``clip`` calls ``allreduce_grads()``, clips the
gradients to a global norm of 1 and calls ``update()``. Arguments after the third are ignored: a
test appends a marker that finds this job's processes.
"""
import json
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends
from gluon_elastic.data import ElasticSampler

NUM_SAMPLES, LOCAL_BATCH_SIZE, MAX_NORM = 13, 4, 1.0
OPTIMIZER_PARAMS = {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.01}


def main():
    backend_name, mode, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    backend = backends.create(backend_name)
    values = np.arange(1, NUM_SAMPLES + 1, dtype=np.float32)
    net = gluon.nn.Dense(1, in_units=2, use_bias=False)
    net.initialize(mx.init.One())
    trainer = ElasticTrainer(net.collect_params(), "sgd", dict(OPTIMIZER_PARAMS),
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE)
    sampler = ElasticSampler(NUM_SAMPLES, shuffle=False)
    step = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
        for indices, global_batch_size in sampler.iter_batches(sizes, trainer.rank):
            if len(indices):  # a rank without samples runs no forward/backward
                x = mx.nd.ones((len(indices), 2))
                with autograd.record():
                    loss = (mx.nd.array(values[indices]) * net(x).reshape(-1)).sum()
                loss.backward()
            if mode == "step":
                trainer.step(len(indices), global_batch_size=global_batch_size)
            else:
                trainer.allreduce_grads(len(indices), global_batch_size=global_batch_size)
                gluon.utils.clip_global_norm([net.weight.grad()], MAX_NORM)
                trainer.update(len(indices))
            sampler.record(global_batch_size)
            print(json.dumps({"rank": trainer.rank, "world_size": trainer.world_size,
                              "step": step, "batch": len(indices),
                              "weight": net.weight.data().asnumpy().ravel().tolist()}),
                  flush=True)
            step += 1
    mx.nd.waitall()
    trainer.backend.barrier()


if __name__ == "__main__":
    main()
