"""JSON-lines metrics of a training run: what the world size, LR, loss and throughput did, and why.

    metrics = MetricsWriter(args.metrics_file, trainer, interval=args.metrics_interval)
    metrics.start(resumed=checkpoint_was_loaded)
    fit = gluon_elastic.run.run(metrics.watch(train_function))
    ...                      # in the loop, after every trainer.step():
    metrics.step(epoch, loss=mean_loss_of_the_step, global_batch_size=global_batch_size)
    ...                      # after each epoch:
    metrics.epoch_end(epoch, loss=epoch_loss, samples_per_second=rate, validation={...})

Contract
--------
Rank 0 (whichever process holds rank 0 at the moment: it moves after a reset) appends one JSON
object per line and flushes it, so a crash loses at most the line being written and the file can
be read while the job runs. Other ranks write nothing. A process that starts fresh (iteration 0,
first launch, nothing resumed) truncates the file; a process resuming from saved state, a
relaunched KVStore group and a Horovod worker that becomes rank 0 later append to it, so one file
holds the whole run across restarts. ``gluon_elastic.plot`` draws it.

Every record has ``kind`` and ``time`` (Unix seconds). Kinds:

``start``
    A process began writing: ``backend``, ``world_size``, ``global_batch_size``, ``iteration``,
    ``progress`` (samples trained), ``generation`` (KVStore relaunch count), ``pid``.
``step``
    Every ``interval`` optimizer steps: ``iteration`` (updates done, after this step),
    ``epoch``, ``world_size``, ``global_batch_size`` (of this step), ``lr`` (applied by this step),
    ``loss`` (mean per-sample loss of this step on rank 0, or over every virtual worker when
    emulating), ``metric`` (a dict of training metrics of the step, possibly empty),
    ``samples_per_second`` (samples of the whole group per wall-clock second since the previous
    step record) and ``progress``.
``epoch``
    End of an epoch: ``epoch``, ``iteration``, ``loss``, ``samples_per_second``, ``validation``.
``event``
    ``event`` names it:

    * ``world_change``: the first step in a new world: ``iteration`` (of that step, as in the
      trainer's ``world change at iteration N`` log line), ``world_size_from``, ``world_size``,
      ``global_batch_size_from``, ``global_batch_size``, ``k`` (ratio of the global batches),
      ``ramp_iterations`` (0: immediate) and ``target_multiplier``. One per log line of the trainer.
    * ``failure``: a collective failed (a worker died): ``iteration``, ``world_size``, ``error``.
    * ``rollback``: the state went back to the last commit: ``iteration_from``, ``iteration``
      (restored), ``lost_iterations``.
    * ``reset``: Horovod re-initialised on a new world (after a failure or a membership change):
      ``cause`` (``failure`` or ``hosts_updated``), ``world_size_from``, ``world_size``.
    * ``restart``: this process resumed from saved state (a checkpoint: a relaunched KVStore group
      or Horovod job, or a resumed run): ``iteration``, ``progress``, ``generation`` and, when the
      file already held steps, ``iteration_from`` (the last step recorded before). A restart that
      resumes an earlier iteration than the last recorded one is followed by a ``rollback``.

Failures are only seen where the process survives them (Horovod in place); a KVStore group that
dies is relaunched by the supervisor and reports a ``restart``, plus a ``rollback`` when steps were
lost.
"""
import functools
import json
import logging
import os
import time

__all__ = ["MetricsWriter", "read_records"]

logger = logging.getLogger("gluon_elastic")


def read_records(path):
    """The records of a metrics file as a list of dicts.

    A last line cut short (the writer died while writing it) is skipped; any other bad line raises.

    Raises
    ------
    ValueError
        A line in the middle of the file is not a JSON object.
    """
    with open(path) as fin:
        lines = fin.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError("%s:%d is not a JSON line: %r" % (path, number, line[:80])) from None
        if not isinstance(record, dict) or "kind" not in record:
            raise ValueError("%s:%d is not a metrics record: %r" % (path, number, line[:80]))
        records.append(record)
    return records


def _last_step(path):
    """The last ``step`` record of an existing metrics file, or None."""
    if not os.path.exists(path):
        return None
    try:
        records = read_records(path)
    except ValueError:  # a damaged file from elsewhere: do not guess what it held
        return None
    steps = [record for record in records if record["kind"] == "step"]
    return steps[-1] if steps else None


class MetricsWriter:
    """Write a run's metrics and events as JSON lines on rank 0 (see the module docstring).

    Parameters
    ----------
    path : str or None
        The metrics file (``--metrics-file``); None makes every method a no-op.
    trainer : gluon_elastic.ElasticTrainer
        Read for rank, world, global batch, LR, iteration and progress.
    interval : int
        Steps between ``step`` records. Events are detected at every step whatever the interval.
    clock : callable
        Returns the time in seconds (tests pass a fake one).
    """

    def __init__(self, path, trainer, interval=1, clock=time.time):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError("interval must be a positive integer, got %r" % (interval,))
        self.path = path
        self.trainer = trainer
        self.interval = interval
        self._clock = clock
        self._file = None
        self._world_size = trainer.world_size
        self._rate_tic = clock()
        self._rate_samples = 0
        self._pending = None        # (cause, iteration, world_size) of the last interruption
        self._unwritten = []        # events caught while this process was not rank 0
        self._restart_pending = False       # a restart whose state may still be loading
        self._last_before_restart = None    # last step record of the run before it
        self._generation = 0

    @property
    def enabled(self):
        """Whether this process writes now (a file was given and it holds rank 0)."""
        return self.path is not None and self.trainer.rank == 0

    # ------------------------------------------------------------------------------ writing
    def _write(self, record, mode="a"):
        if not self.enabled:
            if self._file is not None:  # rank 0 moved to another process
                self._file.close()
                self._file = None
            return
        if self._file is None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            self._file = open(self.path, mode)
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def record(self, kind, **fields):
        """Write one record of ``kind`` with ``fields`` and the current time (rank 0 only)."""
        if self.path is None:
            return
        self._write(dict(fields, kind=kind, time=fields.get("time", self._clock())))

    def event(self, name, **fields):
        """Write an ``event`` record named ``name``."""
        self.record("event", event=name, **fields)

    def close(self):
        """Close the file (the writer reopens it if written to again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---------------------------------------------------------------------------- lifecycle
    def start(self, resumed=False, backend_name=None):
        """Record the start of this process; call after any checkpoint has been loaded.

        Parameters
        ----------
        resumed : bool
            Whether saved state was loaded (a checkpoint of this run): the ``restart`` is recorded
            now. Under a relaunch (``GLUON_ELASTIC_GENERATION`` above 0) without it, the state may
            still be loaded inside :func:`gluon_elastic.run.run` (durable commits), so the restart
            is recorded at the first call of the function :meth:`watch` wraps. Either means
            *append*; otherwise rank 0 truncates the file.
        backend_name : str, optional
            Recorded as ``backend`` (default: the trainer's backend name).
        """
        if self.path is None:
            return
        from .restart import generation

        relaunch = generation()
        restarted = bool(resumed) or relaunch > 0
        if self.enabled and not restarted:
            self._write_header(backend_name, relaunch, mode="w")
        else:
            self._write_header(backend_name, relaunch)
        if restarted:
            self._last_before_restart = _last_step(self.path)
            self._generation = relaunch
            self._restart_pending = True
            if resumed:
                self._record_restart()
            # Otherwise a relaunched job may still load its state inside gluon_elastic.run.run
            # (durable commits of a relaunched Horovod job): the first call of the function that
            # watch() wraps records the restart from what was loaded by then.
        self.check_world()

    def _record_restart(self):
        trainer, last = self.trainer, self._last_before_restart
        self._last_before_restart, self._restart_pending = None, False
        fields = {"iteration": trainer.iteration, "progress": trainer.progress,
                  "generation": self._generation, "world_size": trainer.world_size}
        if last is not None:
            fields["iteration_from"] = last["iteration"]
            # The world the run was in: a change to the current one is a world change.
            self._world_size = last["world_size"]
        self.event("restart", **fields)
        if last is not None and last["iteration"] > trainer.iteration:
            self.event("rollback", iteration_from=last["iteration"], iteration=trainer.iteration,
                       lost_iterations=last["iteration"] - trainer.iteration)
        self.check_world()

    def _write_header(self, backend_name, relaunch, mode="a"):
        trainer = self.trainer
        if not self.enabled:
            return
        self._write({"kind": "start", "time": self._clock(),
                     "backend": backend_name or trainer.backend.name,
                     "world_size": trainer.world_size,
                     "global_batch_size": trainer.global_batch_size,
                     "iteration": trainer.iteration, "progress": trainer.progress,
                     "generation": relaunch, "pid": os.getpid()}, mode=mode)

    def check_world(self, iteration=None):
        """Write a ``world_change`` event if the world differs from the one last seen.

        ``iteration`` is that of the first step in the new world (default: the next step's).
        """
        trainer = self.trainer
        world_size = trainer.world_size
        if world_size == self._world_size:
            return False
        old, self._world_size = self._world_size, world_size
        policy = trainer.batch_policy
        old_batch, new_batch = policy.global_batch_size(old), policy.global_batch_size(world_size)
        iteration = trainer.iteration if iteration is None else iteration
        transition = trainer.transition
        # The trainer started its transition at this iteration; its ramp length is the one in force.
        ramp = transition.ramp_len if transition.start_iter == iteration else 0
        self.event("world_change", iteration=iteration, world_size_from=old,
                   world_size=world_size, global_batch_size_from=old_batch,
                   global_batch_size=new_batch, k=new_batch / old_batch, ramp_iterations=ramp,
                   target_multiplier=transition.target_multiplier)
        return True

    def step(self, epoch, loss, global_batch_size=None, metric=None):
        """Call after every ``trainer.step()``; writes a ``step`` record every ``interval`` steps.

        Parameters
        ----------
        epoch : int
        loss : float
            Mean per-sample loss of the step.
        global_batch_size : int, optional
            Samples of the step over the whole group (default: the trainer's global batch).
        metric : dict, optional
            Training metrics of the step (name -> float).
        """
        if self.path is None:
            return
        trainer = self.trainer
        global_batch_size = trainer.global_batch_size if global_batch_size is None \
            else global_batch_size
        # The step just taken is the first of a new world when the world moved since the last one.
        self.check_world(iteration=trainer.iteration - 1)
        self._rate_samples += global_batch_size
        if trainer.iteration % self.interval != 0:
            return
        now = self._clock()
        rate = self._rate_samples / max(now - self._rate_tic, 1e-9)
        self._rate_tic, self._rate_samples = now, 0
        self.record("step", time=now, iteration=trainer.iteration, epoch=epoch,
                    world_size=trainer.world_size, global_batch_size=global_batch_size,
                    lr=float(trainer.last_lr), loss=float(loss),
                    metric={name: float(value) for name, value in (metric or {}).items()},
                    samples_per_second=rate, progress=trainer.progress)

    def epoch_end(self, epoch, loss, samples_per_second, validation=None):
        """Write an ``epoch`` record (call after the evaluation)."""
        # The evaluation is not training: the next step's throughput is measured from here.
        self._rate_tic, self._rate_samples = self._clock(), 0
        self.record("epoch", epoch=epoch, iteration=self.trainer.iteration, loss=float(loss),
                    samples_per_second=float(samples_per_second),
                    validation={name: float(value) for name, value in (validation or {}).items()})

    # ------------------------------------------------------------------------------ failures
    def watch(self, func):
        """Wrap a function run by :func:`gluon_elastic.run.run` to record its interruptions.

        ``run(metrics.watch(fit))``: a failed collective inside ``fit`` is recorded as a ``failure``
        (by rank 0 at once, or by whoever is rank 0 after the reset when rank 0 was the one lost),
        and when ``run`` calls ``fit`` again after the reset, the ``reset``, the ``rollback`` (after
        a failure) and the ``world_change`` are recorded. Exceptions pass through unchanged.
        """
        from .run import HorovodInternalError, HostsUpdatedInterrupt, is_horovod_error

        import mxnet as mx

        @functools.wraps(func)
        def wrapper(state, *args, **kwargs):
            if self._restart_pending:
                self._record_restart()
            self._resumed_after_reset(state)
            try:
                return func(state, *args, **kwargs)
            except HostsUpdatedInterrupt:
                self._interrupted("hosts_updated", None)
                raise
            except HorovodInternalError as err:
                self._interrupted("failure", err)
                raise
            except mx.base.MXNetError as err:
                if is_horovod_error(err):  # run.run translates it into HorovodInternalError
                    self._interrupted("failure", err)
                raise

        return wrapper

    def _interrupted(self, cause, err):
        trainer = self.trainer
        self._pending = (cause, trainer.iteration, trainer.world_size)
        if cause == "failure":
            failure = {"time": self._clock(), "iteration": trainer.iteration,
                       "world_size": trainer.world_size,
                       "error": str(err).strip().splitlines()[0][:300] if str(err).strip() else
                       type(err).__name__}
            if self.enabled:
                self.event("failure", **failure)
            else:
                self._unwritten.append(("failure", failure))

    def _resumed_after_reset(self, state):
        if self._pending is None:
            return
        cause, iteration, world_size = self._pending
        self._pending = None
        for name, fields in self._unwritten:
            self.event(name, **fields)
        self._unwritten = []
        self.event("reset", cause=cause, generation=getattr(state, "generation", None),
                   world_size_from=world_size, world_size=self.trainer.world_size)
        if cause == "failure":
            self.event("rollback", iteration_from=iteration, iteration=self.trainer.iteration,
                       lost_iterations=iteration - self.trainer.iteration)
        self.check_world()
        # Throughput restarts from here: the reset's time is not training time.
        self._rate_tic, self._rate_samples = self._clock(), 0
