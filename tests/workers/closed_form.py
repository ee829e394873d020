"""Worker of the closed-form multi-process tests.

Each rank's per-sample gradient is ``rank + 1`` (loss = (rank + 1) * sum(w) per sample), so the mean
gradient over the global batch is known exactly. A small conv layer, initialised differently on
every rank and run forward before the trainer exists (which makes MKLDNN re-lay its weight out),
must come out equal to rank 0's on every rank. After every step the worker prints one JSON line
with its rank, world size, weights and the conv checksum.

    python tests/workers/closed_form.py BACKEND STEPS LOCAL_BATCH_SIZE LR MOMENTUM [MARKER]

Arguments after the fifth are ignored: a test appends a marker that finds this job's processes.
"""
import json
import sys

import mxnet as mx
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends


def main():
    backend_name, steps, local_batch_size, lr, momentum = sys.argv[1:6]
    steps, local_batch_size = int(steps), int(local_batch_size)
    backend = backends.create(backend_name)
    mx.random.seed(100 + backend.rank)  # different initial values on every rank
    net = gluon.nn.HybridSequential()
    dense = gluon.nn.Dense(1, in_units=4, use_bias=False)
    conv = gluon.nn.Conv2D(8, 3, in_channels=4)
    net.add(dense, conv)
    net.initialize(mx.init.Uniform())
    dense.weight.set_data(mx.nd.ones((1, 4)))
    conv(mx.nd.ones((1, 4, 6, 6)))
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": float(lr), "momentum": float(momentum)},
                             kvstore=backend, local_batch_size=local_batch_size)
    conv_initial = conv.weight.data().asnumpy().astype("float64").sum()
    x = mx.nd.ones((local_batch_size, 4))
    for step in range(steps):
        with autograd.record():
            # The conv output enters with weight 0: its gradient is exactly 0.
            loss = (trainer.rank + 1) * dense(x).sum() + 0 * conv(mx.nd.ones((1, 4, 6, 6))).sum()
        loss.backward()
        trainer.step(local_batch_size)
        print(json.dumps({"rank": trainer.rank, "world_size": trainer.world_size, "step": step,
                          "lr": trainer.learning_rate,
                          "weight": dense.weight.data().asnumpy().ravel().tolist(),
                          "conv_initial": float(conv_initial)}), flush=True)
    mx.nd.waitall()
    trainer.backend.barrier()


if __name__ == "__main__":
    main()
