"""Worker of the closed-form multi-process tests.

Each rank's per-sample gradient is ``rank + 1`` (loss = (rank + 1) * sum(w) per sample), so the mean
gradient over the global batch is known exactly. After every step the worker prints one JSON line
with its rank, world size and weights; the test compares them with the closed form.

    python tests/workers/closed_form.py BACKEND STEPS LOCAL_BATCH_SIZE LR MOMENTUM
"""
import json
import sys

import mxnet as mx
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer


def main():
    backend, steps, local_batch_size, lr, momentum = sys.argv[1:6]
    steps, local_batch_size = int(steps), int(local_batch_size)
    net = gluon.nn.Dense(1, in_units=4, use_bias=False)
    net.initialize(mx.init.Constant(1.0))
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": float(lr), "momentum": float(momentum)},
                             kvstore=backend, local_batch_size=local_batch_size)
    x = mx.nd.ones((local_batch_size, 4))
    for step in range(steps):
        with autograd.record():
            loss = (trainer.rank + 1) * net(x).sum()
        loss.backward()
        trainer.step(local_batch_size)
        weight = net.weight.data().asnumpy().ravel().tolist()
        print(json.dumps({"rank": trainer.rank, "world_size": trainer.world_size, "step": step,
                          "lr": trainer.learning_rate, "weight": weight}), flush=True)
    mx.nd.waitall()
    trainer.backend.barrier()


if __name__ == "__main__":
    main()
