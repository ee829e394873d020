"""What every GluonCV recipe in ``scripts/`` shares: validation, devices, log format, checkpoints,
and the elastic training loop.

Contract
--------
A recipe supplies the nouns (data set, model, per-shard loss, evaluation of a shard of the
validation set) and calls :class:`ElasticLoop`, which owns the verbs that must be identical in
every recipe:

* **one code path for every backend.** The loop asks the backend for ``rank`` and ``world_size``
  and never looks at its name. With ``--emulate-schedule`` the process is a
  :class:`gluon_elastic.backends.LocalBackend` whose ``world_size`` is set at the start of each
  epoch to the schedule's virtual world, and :class:`gluon_elastic.emulate.EmulatedWorkers` runs
  the forward/backward of every virtual worker on its own per-worker batch (own BatchNorm batch
  statistics); the gradients add up to the sum over the global batch, as a real group's
  reduction does. A real worker is the same loop with one shard: its own.
* **data order.** :class:`gluon_elastic.data.ElasticSampler` splits each global batch over the ranks
  of the *current* world; a short last global batch is dropped, so every worker always trains on
  its full per-worker batch (and BatchNorm never sees a batch of one).
* **devices.** A process drives ``max(1, --num-gpus)`` devices by the rule of
  :mod:`gluon_elastic.devices` (local rank ``r``: ``gpu(r*N) .. gpu(r*N+N-1)``; with ``--device
  cpu``, ``cpu(0) .. cpu(N-1)``). Each worker's batch is split over them as GluonCV's scripts do,
  the loss runs once per device on that device's part, and the trainer sums their gradients;
  every device holds the same weights. Evaluation splits its batches the same way, with rank 0's
  first-device BatchNorm statistics on every device.
* **state.** One checkpoint system: :class:`gluon_elastic.checkpoint.CheckpointManager` files
  (atomic, checksummed) of the :class:`gluon_elastic.state.ElasticState` (parameters with BatchNorm
  statistics, optimizer and elastic trainer state, sampler position) in ``--checkpoint-dir`` or the
  supervisor's directory. The sampler moves to the next epoch *before* the end-of-epoch save, so
  saved state always says where to start. Under :mod:`gluon_elastic.supervisor` (KVStore) a
  :class:`gluon_elastic.restart.RestartAgent` resumes from the newest file, saves at commits within
  its time budget and at every epoch end, prints a progress marker after every step and during
  long phases (every item of :func:`gluon_elastic.progress.progress`: evaluation, data indexing),
  and stops at the next step all ranks agree on when the supervisor asks (save-and-stop). Under
  elastic Horovod (:mod:`gluon_elastic.horovodrun`) the run loop makes every commit durable in the
  same directory and a relaunch resumes from it. :func:`latest_checkpoint` reads a run's newest
  file.
* **in-place elasticity.** :func:`run_loop` wraps :meth:`ElasticLoop.run` with
  :func:`gluon_elastic.run.run` around a :class:`gluon_elastic.state.ElasticState` of the model,
  trainer and sampler. The loop calls ``state.commit()`` every ``--commit-interval`` steps and at
  the end of each epoch, and ``state.check_host_updates()`` every ``--check-interval`` steps; after
  a reset it is called again and continues from the sampler's position, split over the new world
  (the ``Batch`` counter of the log restarts then). On backends that are not elastic in place
  these calls cost a host copy at commits and nothing else.
* **log format** (rank 0 only; GluonCV's fields, with world size and global batch added): the
  lines come from a log format object (:mod:`gluon_elastic.recipe_log`; ``log_format`` of
  :func:`fit`), by default::

    Epoch[E] Batch [B]\\tSpeed: S samples/sec\\tworld=W\\tglobal_batch=G\\tlr=L\\tloss=X
    [Epoch E] training: loss=X\\tworld=W\\tglobal_batch=G
    [Epoch E] speed: S samples/sec\\ttime cost: T
    [Epoch E] validation: name=value\\t...

  ``Speed`` counts samples of the whole (real or virtual) group, ``lr`` is the LR of the last step
  and ``loss`` the mean per-sample loss of the epoch so far (this worker's, or every virtual
  worker's when emulating).
* **metrics** (``--metrics-file``): the same quantities per step and per epoch, and one event per
  world change, failure, rollback, reset and restart, as JSON lines written by rank 0
  (:mod:`gluon_elastic.metrics`; drawn by ``python -m gluon_elastic.plot``).
"""
import logging
import os
import time

import numpy as np

from . import backends as _backends
from . import devices as _devices
from . import flags as _flags

__all__ = ["add_run_args", "add_schedule_args", "build_schedule", "check_elastic_args",
           "create_backend", "choose_contexts", "setup_logging", "format_metrics",
           "latest_checkpoint",
           "ElasticLoop", "NoElasticState", "run_loop", "prepare", "fit"]

logger = logging.getLogger("gluon_elastic.recipe")


# ------------------------------------------------------------------------------- validation
def check_elastic_args(parser, args, num_train_samples, num_epochs):
    """End the program with a usage message (exit code 2) when the elastic flags cannot work.

    Checks what argparse cannot see alone: the flag combinations of
    :func:`gluon_elastic.flags.trainer_kwargs`, an emulated schedule on a multi-process backend or
    past the last epoch, and a global batch larger than the training set at any world of the
    schedule. Nothing has been written when this runs.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    args : argparse.Namespace
    num_train_samples : int
        Size of the training set.
    num_epochs : int
        Epochs the run trains.
    """
    try:
        _flags.trainer_kwargs(args)
    except ValueError as err:
        parser.error(str(err))
    worlds = [1]
    if args.emulate_schedule is not None:
        if args.backend not in ("local", "device"):
            parser.error("--emulate-schedule runs the virtual world in one process; use "
                         "--backend local or device, got --backend %s" % args.backend)
        late = [epoch for epoch, _ in args.emulate_schedule if epoch >= num_epochs]
        if late:
            parser.error("--emulate-schedule changes the world at epoch %d, but training has only "
                         "%d epochs (0..%d)" % (late[0], num_epochs, num_epochs - 1))
        worlds = [world_size for _, world_size in args.emulate_schedule]
    for world_size in worlds:
        if args.batch_policy == "fixed_global":
            global_batch_size = args.global_batch_size
            if world_size > global_batch_size:
                parser.error("--global-batch-size %d cannot be split over a world of %d workers"
                             % (global_batch_size, world_size))
        else:
            global_batch_size = args.local_batch_size * world_size
        if global_batch_size > num_train_samples:
            parser.error("global batch %d (world %d) is larger than the %d training samples; "
                         "lower --local-batch-size or the world size"
                         % (global_batch_size, world_size, num_train_samples))


def create_backend(args):
    """The backend named by ``--backend``; a LocalBackend of the first virtual world when emulating."""
    if args.emulate_schedule is not None:
        return _backends.LocalBackend(args.backend,
                                      world_size=_flags.world_at(args.emulate_schedule, 0))
    return _backends.create(args.backend)


def choose_contexts(backend, device="auto", num_gpus=0):
    """The devices of this process: ``max(1, num_gpus)`` of them, by the backend's local rank.

    The rule is :func:`gluon_elastic.devices.choose_contexts`: GPUs ``r*N .. r*N+N-1`` for local
    rank ``r`` (``--device gpu``, or ``auto`` on a host with GPUs), else ``cpu(0) .. cpu(N-1)``.

    Raises
    ------
    ValueError
        ``device='gpu'`` on a machine without GPUs, or too few GPUs for this local rank.
    """
    return _devices.choose_contexts(backend.local_rank, max(1, num_gpus or 0), device)


def setup_logging(rank):
    """Progress of the ``gluon_elastic`` loggers on rank 0 only; other ranks log warnings and errors.

    The root handler is only installed when the program has none (a host program's, or a test
    runner's, stays in place).
    """
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gluon_elastic").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def format_metrics(metrics):
    """``name=value`` pairs joined by tabs, in the order given."""
    return "\t".join("%s=%.6f" % (name, value) for name, value in metrics.items())


# ------------------------------------------------------------------------------ run options
def add_run_args(parser, log_interval=20, num_data_workers=4):
    """Flags every recipe shares besides the elastic ones: device, data loading, progress output."""
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                       help="auto: GPUs when the host has any, else the CPU")
    group.add_argument("--num-gpus", type=_flags.non_negative_int, default=0,
                       help="devices this process drives, N = max(1, this): the process with "
                            "local rank r on its host takes gpu(r*N) .. gpu(r*N+N-1); on the CPU "
                            "cpu(0) .. cpu(N-1), N contexts of one processor. Each step's batch "
                            "is split over them (default: %(default)s)")
    group.add_argument("-j", "--num-data-workers", type=_flags.non_negative_int,
                       default=num_data_workers,
                       help="data loader processes per worker (default: %(default)s)")
    group.add_argument("--log-interval", type=int, default=log_interval,
                       help="steps between progress lines on rank 0 (default: %(default)s)")
    group.add_argument("--progress-file", default=None,
                       help="rank 0 rewrites this file with the number of samples trained after "
                            "every step (what scripts/discovery.py reads to follow a schedule of "
                            "hosts)")
    _flags.add_metrics_args(parser)
    return group


# ------------------------------------------------------------------------------ LR schedule
def add_schedule_args(parser, lr_mode="cosine", warmup_epochs=0.0, lr_decay_epoch="",
                      warmup_lr=None, lr_power=0.9):
    """Flags of the base LR schedule (warmup, then step, linear, cosine or poly decay), recipe defaults.

    ``warmup_lr=None`` makes the warmup start at ``lr / 100``; GluonCV's scripts start at 0.
    """
    from .schedule import SCHEDULE_MODES

    group = parser.add_argument_group("learning-rate schedule (in epochs of data, any world)")
    group.add_argument("--lr-mode", default=lr_mode, choices=SCHEDULE_MODES,
                       help="shape after warmup (default: %(default)s)")
    group.add_argument("--lr-decay", type=_flags.positive_float, default=0.1,
                       help="factor of step decay")
    group.add_argument("--lr-decay-period", type=_flags.non_negative_int, default=0,
                       help="decay every this many epochs (0: use --lr-decay-epoch)")
    group.add_argument("--lr-decay-epoch", default=lr_decay_epoch,
                       help="comma-separated epochs of step decay (default: %(default)r)")
    group.add_argument("--lr-power", type=_flags.non_negative_float, default=lr_power,
                       help="exponent of poly decay (default: %(default)s)")
    group.add_argument("--warmup-epochs", type=_flags.non_negative_float, default=warmup_epochs,
                       help="linear warmup length (default: %(default)s)")
    group.add_argument("--warmup-lr", type=_flags.non_negative_float, default=warmup_lr,
                       help="LR at the start of warmup (default: %s)"
                            % ("lr / 100" if warmup_lr is None else "%(default)s"))
    return group


def build_schedule(parser, args, num_train_samples):
    """The :class:`gluon_elastic.schedule.Schedule` of the schedule flags, in samples.

    Warmup and decay are given in epochs and converted with the size of the training set, so the
    LR follows the data seen whatever the world size. A bad value ends with a usage message.
    """
    from .schedule import Schedule

    try:
        decay_epochs = [float(e) for e in args.lr_decay_epoch.split(",") if e.strip()]
    except ValueError:
        parser.error("--lr-decay-epoch takes comma-separated epochs, got %r" % args.lr_decay_epoch)
    if getattr(args, "lr_decay_period", 0):
        # GluonCV: a decay every period epochs replaces the listed epochs.
        decay_epochs = list(range(args.lr_decay_period, args.epochs, args.lr_decay_period))
    warmup = int(args.warmup_epochs * num_train_samples)
    warmup_lr = args.lr / 100.0 if args.warmup_lr is None else args.warmup_lr
    total = max(int(args.epochs * num_train_samples), warmup + 1)
    try:
        return Schedule(args.lr_mode, base_lr=args.lr, total_samples=total, warmup_samples=warmup,
                        warmup_lr=warmup_lr, step_factor=args.lr_decay, power=args.lr_power,
                        step_samples=[int(e * num_train_samples) for e in decay_epochs])
    except ValueError as err:
        parser.error(str(err))


# ------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(directory):
    """What the newest checkpoint of a recipe run holds, as plain values; None when there is none.

    Recipes keep their restart state in :class:`gluon_elastic.checkpoint.CheckpointManager` files
    (atomic, checksummed; written by the restart agent or by elastic Horovod's durable commits).

    Returns
    -------
    dict or None
        ``step`` and ``path`` of the file, ``epoch`` (the next epoch to train), ``sampler``,
        ``params`` (name -> numpy array), and the trainer's ``iteration``, ``progress``,
        ``world_size`` and ``lr`` (of its last step).
    """
    from .checkpoint import CheckpointManager
    from .trainer import describe_states

    loaded = CheckpointManager(directory).load_latest()
    if loaded is None:
        return None
    state = loaded.state
    trainer = describe_states(state["trainer"])
    return {"step": loaded.step, "path": loaded.path, "epoch": state["sampler"]["epoch"],
            "sampler": state["sampler"], "params": state["params"],
            "iteration": trainer["iteration"], "progress": trainer["progress"],
            "world_size": trainer["world_size"], "lr": trainer["lr"]}


# ------------------------------------------------------------------------------- elastic loop
def _write_progress(path, progress):
    # Atomic replace: a discovery script may read the file at any moment.
    tmp_path = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp_path, "w") as fout:
        fout.write("%d\n" % progress)
    os.replace(tmp_path, path)


class NoElasticState:
    """Stand-in for an elastic state when nothing can change in place: commit and check do nothing."""

    def commit(self):
        """Nothing to commit."""

    def check_host_updates(self):
        """Nothing to check."""


class ElasticLoop:
    """The training loop shared by the recipes.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed flags: the elastic ones, ``epochs`` and ``log_interval``.
    net : mxnet.gluon.Block
    trainer : gluon_elastic.ElasticTrainer
    sampler : gluon_elastic.data.ElasticSampler
        Over the training set.
    make_loader : callable
        ``make_loader(batch_indices, epoch)`` returns an iterable of batches (tuples of NDArrays
        whose first axis follows the indices) for an iterable of index lists, one list per step.
    loss_fn : callable
        ``loss_fn(net, shard)`` returns the per-sample loss of one device's part of one worker's
        batch (a tuple of NDArrays already on that device); its sum is differentiated and the
        trainer divides by the global batch.
    evaluate_fn : callable
        ``evaluate_fn(net, indices)`` returns picklable statistics of a shard of the validation set.
    reduce_fn : callable
        ``reduce_fn(list_of_statistics)`` returns an ordered dict of metrics.
    num_val_samples : int
        Size of the validation set (0: no evaluation).
    agent : gluon_elastic.restart.RestartAgent, optional
        Saves at the end of every epoch, and stops the loop at the step all ranks agreed on when
        the supervisor asks (save-and-stop); None when nothing is saved here (no
        ``--checkpoint-dir``, or elastic Horovod, whose commits are made durable by the run loop).
    log_format : gluon_elastic.recipe_log.RecipeLog, optional
        Makes rank 0's progress lines (default: :class:`~gluon_elastic.recipe_log.RecipeLog`).
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, net, trainer, metrics)``, called on every rank after the epoch's
        checkpoint (a recipe's own outputs, such as GluonCV's ``--save-dir`` files).
    contexts : list of mxnet.Context, optional
        The devices of this process (default: those the parameters live on). Each worker's batch
        is split over them (:func:`gluon_elastic.devices.split_and_load`), with one forward and
        backward per device; the trainer sums their gradients.
    """

    def __init__(self, args, net, trainer, sampler, make_loader, loss_fn, evaluate_fn, reduce_fn,
                 num_val_samples, agent=None, log_format=None, on_epoch_end=None, contexts=None):
        from .recipe_log import RecipeLog

        from .emulate import EmulatedWorkers
        from .metrics import MetricsWriter

        self.args = args
        self.net = net
        self.trainer = trainer
        self.sampler = sampler
        self.make_loader = make_loader
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate_fn
        self.reduce_fn = reduce_fn
        self.num_val_samples = num_val_samples
        self.agent = agent
        self.stopped = False        # the supervisor asked to stop; the state is saved
        self.log_format = log_format if log_format is not None else RecipeLog()
        self.on_epoch_end = on_epoch_end
        self.emulated = args.emulate_schedule is not None
        self.workers = EmulatedWorkers(net.collect_params())
        params = list(net.collect_params().values())
        self.contexts = list(contexts) if contexts is not None else params[0].list_ctx()
        self._aux_params = [p for p in params if p.grad_req == "null"]
        self._trained_params = [p for p in params if p.grad_req != "null"]
        self.history = []   # (epoch, metrics) of every evaluation, on every rank
        self.metrics = MetricsWriter(getattr(args, "metrics_file", None), trainer,
                                     interval=getattr(args, "metrics_interval", 1))

    # -------------------------------------------------------------------------------- pieces
    def set_world(self, epoch):
        """Apply the emulated schedule's world for ``epoch`` (a no-op for real workers)."""
        if self.emulated:
            self.trainer.backend.set_world_size(_flags.world_at(self.args.emulate_schedule, epoch))

    def _ranks(self):
        # A real worker trains its own shard; the emulating process trains every virtual worker's.
        return list(range(self.trainer.world_size)) if self.emulated else [self.trainer.rank]

    def step_batches(self):
        """Yield ``(per-rank index lists, global batch size)`` for the rest of the epoch.

        The short last global batch of an epoch is dropped (as GluonCV's loaders do with
        ``last_batch='discard'``): BatchNorm and the detection losses need whole per-worker
        batches, so no rank ever has an empty one here.
        """
        local_batch_sizes = self.trainer.batch_policy.local_batch_sizes(self.trainer.world_size)
        full = sum(local_batch_sizes)
        for parts, global_batch_size in self.sampler.iter_steps(local_batch_sizes, self._ranks()):
            if global_batch_size < full:
                return
            yield [list(indices) for indices in parts], global_batch_size

    def _device_losses(self, _rank, shard):
        """One worker's batch split over this process's devices: a loss per device with samples."""
        return [self.loss_fn(self.net, part)
                for part in _devices.split_and_load(shard, self.contexts)]

    def _mark_idle_devices(self, largest_shard):
        """Devices that got no sample this step (a batch smaller than the devices) add nothing.

        Their gradients stay at the zeros the step started from; marking them fresh lets the
        trainer sum them in rather than refuse them as stale.
        """
        if largest_shard >= len(self.contexts):
            return   # every device had samples (the usual case): nothing to walk
        for param in self._trained_params:
            for data in param.list_data()[largest_shard:]:
                data._fresh_grad = True  # pylint: disable=protected-access

    def train_epoch(self, epoch, state):
        """Train the rest of ``epoch``; returns ``(mean loss, samples, seconds)`` of this call."""
        import mxnet as mx

        plan = []

        def flat_indices():
            for index_lists, global_batch_size in self.step_batches():
                plan.append(([len(indices) for indices in index_lists], global_batch_size))
                yield [i for indices in index_lists for i in indices]

        tic = time.time()
        batch_tic = tic
        samples = batch_samples = 0
        loss_sum, loss_count = 0.0, 0
        is_root = self.trainer.rank == 0
        self.log_format.start_epoch(epoch)
        for number, batch in enumerate(self.make_loader(flat_indices(), epoch)):
            shard_sizes, global_batch_size = plan[number]
            columns = [self.workers.split(array, shard_sizes) for array in batch]
            shards = [tuple(column[rank] for column in columns) for rank in range(len(shard_sizes))]
            # AdaScale over emulated workers needs each virtual worker's own gradient norm.
            measure = self.emulated and self.trainer.scaling == "adascale"
            losses = self.workers.forward_backward(self._device_losses, shards,
                                                   batch_sizes=shard_sizes if measure else None)
            self._mark_idle_devices(max(shard_sizes))
            self.trainer.step(global_batch_size=global_batch_size,
                              worker_noise=self.workers.worker_noise if measure else None)
            self.sampler.record(global_batch_size)
            samples += global_batch_size
            batch_samples += global_batch_size
            step_loss = sum(float(loss.sum().asscalar()) for worker_losses in losses
                            for loss in worker_losses)
            loss_sum += step_loss
            loss_count += sum(shard_sizes)
            # The training metric is read (a device sync) only where a metrics file is written.
            self.metrics.step(epoch, step_loss / max(sum(shard_sizes), 1), global_batch_size,
                              metric=self.log_format.training_metrics() or None
                              if self.metrics.enabled else None)
            if is_root and self.args.log_interval and (number + 1) % self.args.log_interval == 0:
                now = time.time()
                logger.info("%s", self.log_format.batch(
                    epoch, number, batch_samples / max(now - batch_tic, 1e-9),
                    self.trainer.last_lr, self.trainer.world_size,
                    self.trainer.global_batch_size, loss_sum / max(loss_count, 1)))
                batch_tic, batch_samples = now, 0
            if is_root and self.args.progress_file:
                _write_progress(self.args.progress_file, self.trainer.progress)
            if self.trainer.iteration % self.args.commit_interval == 0:
                state.commit()  # checks for membership changes too
            elif self.trainer.iteration % self.args.check_interval == 0:
                state.check_host_updates()
            if self.agent is not None and self.agent.after_step(self.trainer.iteration):
                self.stopped = True   # saved at this step; the supervisor relaunches the group
                break
        mx.nd.waitall()
        return loss_sum / max(loss_count, 1), samples, time.time() - tic

    def evaluate(self):
        """Evaluate on the validation set sharded by the current world; same metrics on every rank."""
        if self.num_val_samples == 0:
            return {}
        # Every real worker and every device keeps its own BatchNorm running statistics; those of
        # rank 0's first device are the ones saved (and virtual worker 0's when emulating), so
        # every device of every rank evaluates with those.
        if self._aux_params:
            firsts = [p.list_data()[0] for p in self._aux_params]
            self.trainer.backend.broadcast_arrays(firsts, name="recipe.aux")
            for param, first in zip(self._aux_params, firsts):
                for copy in param.list_data()[1:]:
                    first.copyto(copy)
        indices = np.arange(self.num_val_samples)
        if not self.emulated:
            indices = indices[self.trainer.rank::self.trainer.world_size]
        statistics = self.evaluate_fn(self.net, indices)
        return self.reduce_fn(self.trainer.backend.allgather_object(statistics, name="recipe.eval"))

    # -------------------------------------------------------------------------------- the loop
    def run(self, state=None):
        """Train from the sampler's epoch to ``args.epochs``; returns the last metrics.

        Re-entrant: a run decorator may call it again after a reset, and it resumes from the
        restored sampler.
        """
        import mxnet as mx

        state = state if state is not None else NoElasticState()
        metrics = {}
        while self.sampler.epoch < self.args.epochs:
            epoch = self.sampler.epoch
            self.set_world(epoch)
            loss, samples, seconds = self.train_epoch(epoch, state)
            if self.stopped:
                return metrics
            metrics = self.evaluate()
            self.history.append((epoch, metrics))
            if self.trainer.rank == 0:
                logger.info("%s", self.log_format.training(epoch, loss, self.trainer.world_size,
                                                          self.trainer.global_batch_size))
                logger.info("%s", self.log_format.speed(epoch, samples / max(seconds, 1e-9),
                                                       seconds))
                if metrics:
                    logger.info("%s", self.log_format.validation(epoch, metrics))
            self.metrics.epoch_end(epoch, loss, samples / max(seconds, 1e-9), metrics)
            self.sampler.set_epoch(epoch + 1)
            state.commit()
            if self.agent is not None:  # every epoch end is saved, whatever the save budget says
                self.agent.save(self.trainer.iteration, blocking=False)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, self.net, self.trainer, metrics)
        mx.nd.waitall()
        self.trainer.backend.barrier()
        return metrics


def run_loop(loop, state):
    """Run ``loop`` under :func:`gluon_elastic.run.run` with its ElasticState; returns the metrics."""
    from .run import run as elastic_run

    # A reset can move rank 0 to another process: progress follows it.
    state.register_reset_callbacks([lambda: setup_logging(loop.trainer.rank)])
    return elastic_run(loop.metrics.watch(loop.run))(state)


# ------------------------------------------------------------------------------- entry points
def prepare(parser, args, num_train_samples):
    """Validate the elastic flags, create the backend, set up logging, choose the devices, seed.

    Returns
    -------
    (backend, contexts)
        ``contexts``: the list of devices this process drives (:func:`choose_contexts`).
    """
    import mxnet as mx

    check_elastic_args(parser, args, num_train_samples, args.epochs)
    backend = create_backend(args)
    setup_logging(backend.rank)
    try:
        contexts = choose_contexts(backend, getattr(args, "device", "auto"),
                                   getattr(args, "num_gpus", 0))
    except ValueError as err:
        parser.error(str(err))
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    return backend, contexts


def fit(args, backend, contexts, net, optimizer, optimizer_params, schedule, num_train_samples,
        make_loader, loss_fn, evaluate_fn, reduce_fn, num_val_samples, prefix, log_format=None,
        on_epoch_end=None, on_start=None):
    """Build the trainer and sampler, resume from the newest checkpoint if any, train.

    ``net`` must be initialised on ``contexts`` (what :func:`prepare` returned) with its shapes
    resolved. Returns the :class:`ElasticLoop` after
    training (``loop.history`` holds the metrics of every epoch). ``log_format`` and
    ``on_epoch_end`` go to :class:`ElasticLoop`. ``on_start(trainer, sampler, resumed)``, when
    given, is called once the trainer and sampler exist and the checkpoint (if any) is loaded
    (``resumed`` says whether one was): a recipe loads its own start files there (GluonCV's
    ``--resume-states``) or keeps the trainer and sampler for its data loading. It returns a
    description for the log, or None.
    """
    from . import progress as _progress
    from .data import ElasticSampler
    from .restart import ENV, RestartAgent, default_checkpoint_dir
    from .state import ElasticState
    from .trainer import ElasticTrainer

    trainer = ElasticTrainer(net.collect_params(), optimizer, optimizer_params, kvstore=backend,
                             schedule=schedule, **_flags.trainer_kwargs(args))
    sampler = ElasticSampler(num_train_samples, seed=args.seed)
    state = ElasticState(net, trainer, sampler)
    # One checkpoint system (CheckpointManager files in --checkpoint-dir, or the supervisor's
    # directory). Under elastic Horovod the run loop makes every commit durable there and resumes
    # from it; elsewhere a restart agent resumes, saves and stops when the supervisor asks.
    agent = resumed = listener = None
    checkpoint_dir = args.checkpoint_dir or default_checkpoint_dir()
    if backend.elastic_driver:
        if args.checkpoint_dir:
            os.environ[ENV["checkpoint_dir"]] = os.path.abspath(args.checkpoint_dir)
    elif checkpoint_dir:
        agent = RestartAgent(backend, state, checkpoint_dir=checkpoint_dir, commit_interval=None,
                             check_interval=args.check_interval)
        resumed = agent.restore()
        state.register_commit_callbacks([agent.commit_callback])
        # Long phases (evaluation, data indexing) go through progress(): each item is a sign
        # of life for the supervisor, so a slow phase is told from a hang.
        listener = _progress.add_listener(lambda: agent.heartbeat(trainer.iteration))
    if resumed is not None:
        logger.info("resumed at step %d (epoch %d) from %s", resumed.step, sampler.epoch,
                    resumed.path)
    if on_start is not None:
        started = on_start(trainer, sampler, resumed is not None)
        if started:
            logger.info("%s", started)
    logger.info("model %s, backend %s, world %d, global batch %d, lr %.6g, %d training samples",
                prefix, backend.name, trainer.world_size, trainer.global_batch_size,
                trainer.learning_rate, num_train_samples)
    loop = ElasticLoop(args, net, trainer, sampler, make_loader, loss_fn, evaluate_fn, reduce_fn,
                       num_val_samples, agent, log_format=log_format, on_epoch_end=on_epoch_end,
                       contexts=contexts)
    loop.metrics.start(resumed=resumed is not None)
    try:
        run_loop(loop, state)
    finally:
        if agent is not None:
            _progress.remove_listener(listener)
            agent.close()
    return loop
