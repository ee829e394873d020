"""Worker side of restart elasticity: resume from the last checkpoint, save, stop when asked.

Contract
--------
A KVStore ``dist_sync`` group cannot change size, so :mod:`gluon_elastic.supervisor` resizes it by
stopping it and relaunching it from saved state. Inside each worker a :class:`RestartAgent`:

* :meth:`RestartAgent.restore` loads the newest checkpoint that verifies (every rank reads the same
  file, so the directory must be shared between hosts) and checks that all ranks got the same step;
* :meth:`RestartAgent.after_step` is called at every step boundary. Every ``commit_interval``
  steps rank 0 saves the state (serialised in the loop, written in a background thread), unless
  that would spend more than ``max_save_overhead`` of the time on saving: a save is skipped while
  the time since the previous one started is shorter than that save's cost divided by
  ``max_save_overhead`` (default 1 %), or while it is still being written. A large model on fast
  steps therefore saves less often than every ``commit_interval`` steps, and a failure costs more
  redone steps; a stop request always saves. Every ``check_interval`` steps all
  ranks agree, through one 1-element ``pushpull`` on the KVStore, whether any of them was asked to
  stop. Agreement first, then action: every rank of a ps-lite group must stop at the *same* step,
  or the others block forever in their next push/pull. When the answer is yes, rank 0 saves (unless
  it just did), every rank prints a ``stopped`` marker, and ``after_step`` returns True so the loop
  ends and the process exits 0;
* it prints a ``progress`` marker at most once per ``heartbeat_interval`` seconds, which the
  supervisor reads to detect a hung group.

The supervisor talks to the agent over the worker's standard streams, which ``ssh`` forwards to
remote hosts as well: a ``save`` line on stdin asks for a stop; end of stdin (the supervisor or
its ``ssh`` went away) asks for a stop too, and if the process is still alive ``orphan_grace``
seconds later (blocked in a collective whose peers died) it exits with code 70, so no worker
outlives its supervisor. Outside a supervisor (``GLUON_ELASTIC_SUPERVISED`` unset) stdin is not
read, and the agent only saves, resumes and prints nothing.

Saved work is exactly-once: a checkpoint holds the sampler position of the step it was taken at,
and a group that dies rolls back to it, redoing only the steps after it.

Every ``GLUON_ELASTIC_*`` variable the supervisor sets is named in :data:`ENV` below.
"""
import logging
import os
import select
import sys
import threading
import time

from .checkpoint import CheckpointManager

__all__ = ["RestartAgent", "PROGRESS_MARKER", "STOPPED_MARKER", "SAVE_REQUEST", "ENV"]

logger = logging.getLogger("gluon_elastic")

# Lines exchanged with the supervisor (stdout markers and the stdin request).
PROGRESS_MARKER = "@gluon_elastic:progress"
STOPPED_MARKER = "@gluon_elastic:stopped"
SAVE_REQUEST = b"save"
ORPHAN_EXIT_CODE = 70

# Rendezvous scope in which gluon_elastic.horovodrun's driver answers a worker's "does my slot
# have a rank in the next world?" without registering it (gluon_elastic.run asks it).
NEXT_ASSIGNMENT_SCOPE = "next_assignment"
# Rendezvous scope of a worker that gluon_elastic.horovodrun's driver started ahead of a growth:
# GET says whether this slot was started ahead ("prepared") or not ("no"); PUT reports the
# worker's start-up done; GET on JOIN_SCOPE answers "wait" until the survivors have formed the
# new world, then this slot's assignment in it (rank -1: dropped).
PREPARED_SCOPE = "prepared_joiner"
JOIN_SCOPE = "join"

# The environment the supervisor sets for every worker.
ENV = {
    "supervised": "GLUON_ELASTIC_SUPERVISED",        # "1" under the supervisor
    "generation": "GLUON_ELASTIC_GENERATION",        # 0 for the first launch, +1 per relaunch
    "checkpoint_dir": "GLUON_ELASTIC_CHECKPOINT_DIR",
    "launch_time": "GLUON_ELASTIC_LAUNCH_TIME",      # time.time() when the process was spawned
    "launch_index": "GLUON_ELASTIC_LAUNCH_INDEX",
    "local_rank": "GLUON_ELASTIC_LOCAL_RANK",        # this worker's index among its host's
    "local_size": "GLUON_ELASTIC_LOCAL_SIZE",        # workers of this job on this host
}


def supervised():
    """Whether this process runs under :mod:`gluon_elastic.supervisor`."""
    return os.environ.get(ENV["supervised"]) == "1"


def generation():
    """Launch generation of this process (0 outside a supervisor)."""
    return int(os.environ.get(ENV["generation"], "0"))


def launch_time():
    """``time.time()`` at which the supervisor spawned this process, or None."""
    value = os.environ.get(ENV["launch_time"])
    return float(value) if value else None


def default_checkpoint_dir():
    """The checkpoint directory the supervisor was given, or None."""
    return os.environ.get(ENV["checkpoint_dir"]) or None


class RestartAgent:
    """Resume, save and stop a worker of a restartable group.

    Parameters
    ----------
    backend : gluon_elastic.backends.Backend
        The trainer's backend (``trainer.backend``); it carries the stop vote.
    state : object
        Anything with ``state_dict()`` and ``load_state_dict(d)`` (``gluon_elastic.state.ElasticState``).
    checkpoint_dir : str, optional
        Where checkpoints live; default the supervisor's (``GLUON_ELASTIC_CHECKPOINT_DIR``). None
        disables saving and resuming (the agent then only answers stop requests).
    commit_interval : int or None
        Steps between saves (on the iteration count); None saves only when asked to stop.
    check_interval : int
        Steps between stop votes; every rank must use the same value.
    keep : int
        Checkpoints kept.
    max_save_overhead : float or None
        Largest fraction of the time spent saving on the commit interval (see the module
        docstring); None saves at every commit interval whatever it costs.
    heartbeat_interval : float
        Seconds between progress markers.
    orphan_grace : float
        Seconds a worker may stay alive after its supervisor is gone.
    """

    def __init__(self, backend, state, checkpoint_dir=None, commit_interval=20, check_interval=1,
                 keep=3, max_save_overhead=0.01, heartbeat_interval=1.0, orphan_grace=30.0):
        for name, value in (("check_interval", check_interval),) + (
                (("commit_interval", commit_interval),) if commit_interval is not None else ()):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("%s must be a positive integer, got %r" % (name, value))
        self.backend = backend
        self.state = state
        checkpoint_dir = checkpoint_dir or default_checkpoint_dir()
        self.checkpoints = (CheckpointManager(checkpoint_dir, keep=keep)
                            if checkpoint_dir else None)
        self.commit_interval = commit_interval
        self.check_interval = check_interval
        self.heartbeat_interval = float(heartbeat_interval)
        self.orphan_grace = float(orphan_grace)
        self.generation = generation()
        if max_save_overhead is not None and not 0 < max_save_overhead <= 1:
            raise ValueError("max_save_overhead must be in (0, 1] or None, got %r"
                             % (max_save_overhead,))
        self.max_save_overhead = max_save_overhead
        self.last_saved_step = None
        self.stopped = False
        # Rank 0's accounting of what saving costs (seconds, in the loop and in the writer).
        self.save_count = 0
        self.save_foreground_seconds = 0.0
        self._last_save_started = None
        self._last_save_foreground = 0.0
        self._requested = threading.Event()
        self._closed = threading.Event()
        self._last_heartbeat = None
        if supervised():
            threading.Thread(target=self._read_requests, name="gluon_elastic-requests").start()
        self.heartbeat(None, force=True)

    # ----------------------------------------------------------------------------- requests
    def request_stop(self):
        """Ask for a stop at the next agreed step boundary (what a ``save`` line on stdin does)."""
        self._requested.set()

    @property
    def stop_requested(self):
        """Whether this worker has been asked to stop (its own view, before the vote)."""
        return self._requested.is_set()

    def _read_requests(self):
        # Not a daemon thread parked in a read: MXNet aborts the process at interpreter shutdown
        # ("terminate called without an active exception") when one is. This thread polls stdin
        # and ends on its own once the main thread has finished, so shutdown can join it.
        main = threading.main_thread()
        pending = b""
        while main.is_alive() and not self._closed.is_set():
            try:
                ready, _, _ = select.select([0], [], [], 0.2)
                chunk = os.read(0, 4096) if ready else None
            except (OSError, ValueError):
                chunk = b""
            if chunk is None:
                continue
            if not chunk:
                self._supervisor_gone(main)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if any(line.strip() == SAVE_REQUEST for line in lines):
                self._requested.set()

    def _supervisor_gone(self, main):
        # End of stdin: the supervisor (or the ssh carrying it) is gone. Save and stop at the next
        # boundary; a process blocked in a collective whose peers died never gets there.
        self._requested.set()
        deadline = time.monotonic() + self.orphan_grace
        while main.is_alive() and not self._closed.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
        if main.is_alive() and not self._closed.is_set() and not self.stopped:
            sys.stderr.write("gluon_elastic: supervisor gone and no step boundary reached within "
                             "%.0f s; exiting\n" % self.orphan_grace)
            sys.stderr.flush()
            os._exit(ORPHAN_EXIT_CODE)  # pylint: disable=protected-access

    # ------------------------------------------------------------------------- save / restore
    def restore(self):
        """Load the newest usable checkpoint into the state.

        Returns
        -------
        gluon_elastic.checkpoint.Loaded or None
            What was loaded (``step``, ``path``, ``skipped``), or None when starting fresh.
        """
        loaded = self.checkpoints.load_latest() if self.checkpoints is not None else None
        step = None if loaded is None else loaded.step
        if self.backend.world_size > 1:
            # Ranks read the directory independently; a rank that sees another file (a directory
            # that is not shared, a file damaged in transit) would train from another state.
            steps = self.backend.allgather_object(step, name="restore_step")
            if len(set(steps)) != 1:
                raise RuntimeError("ranks restored different checkpoints (steps %r by rank) from "
                                   "%s: the checkpoint directory must be shared by all hosts"
                                   % (steps, self.checkpoints.directory if self.checkpoints
                                      else None))
        if loaded is not None:
            self.state.load_state_dict(loaded.state)
            self.last_saved_step = loaded.step
            logger.info("restored step %d from %s (generation %d)", loaded.step, loaded.path,
                        self.generation)
        # Loading a large state takes a while: the bound on progress starts again from here.
        self.heartbeat(None, force=True)
        return loaded

    def save(self, step, blocking=True):
        """Rank 0 writes the state as the checkpoint of ``step``; other ranks do nothing.

        Returns the file name on rank 0, else None.
        """
        if self.checkpoints is None or step == self.last_saved_step:
            return None
        self.last_saved_step = step
        if self.backend.rank != 0:
            return None
        tic = time.monotonic()
        self._last_save_started = tic
        path = self.checkpoints.save(self.state.state_dict(), step, blocking=blocking)
        self._last_save_foreground = time.monotonic() - tic
        self.save_count += 1
        self.save_foreground_seconds += self._last_save_foreground
        return path

    @property
    def save_write_seconds(self):
        """Seconds rank 0's writer spent on checksums, writes and fsyncs (finished saves)."""
        return self.checkpoints.total_write_seconds if self.checkpoints is not None else 0.0

    def _save_due(self):
        """Whether a commit-interval save fits in the overhead budget (rank 0's decision)."""
        if self.max_save_overhead is None or self._last_save_started is None:
            return True
        if self.checkpoints.writing:
            return False
        cost = self._last_save_foreground + self.checkpoints.last_write_seconds
        return time.monotonic() - self._last_save_started >= cost / self.max_save_overhead

    def commit_callback(self, state):
        """For ``ElasticState.register_commit_callbacks``: save at a commit (background write).

        Within the overhead budget, as for the commit interval; the step is the trainer's
        iteration.
        """
        if self.checkpoints is None or (self.backend.rank == 0 and not self._save_due()):
            return
        self.save(state.trainer.iteration, blocking=False)

    # ---------------------------------------------------------------------------- the loop
    def heartbeat(self, step, force=False):
        """Print a progress marker if ``heartbeat_interval`` has passed (only when supervised)."""
        if not supervised():
            return
        now = time.monotonic()
        if force or self._last_heartbeat is None or \
                now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            sys.stdout.write("%s %s\n" % (PROGRESS_MARKER, "-" if step is None else step))
            sys.stdout.flush()

    def agree_stop(self):
        """Collective: True on every rank when any rank was asked to stop."""
        if self.backend.world_size == 1:
            return self._requested.is_set()
        # One scalar sum over the workers (a reused key on a KVStore).
        votes = self.backend.sum_over_workers([1.0 if self._requested.is_set() else 0.0])
        return float(votes[0]) > 0.0

    def after_step(self, step):
        """Call after every optimizer step with the trainer's iteration; True means stop now.

        Every rank must call it after every step (the stop vote is a collective).
        """
        self.heartbeat(step)
        if self.commit_interval is not None and step % self.commit_interval == 0 and \
                self.checkpoints is not None and (self.backend.rank != 0 or self._save_due()):
            self.save(step, blocking=False)
        if step % self.check_interval != 0 or not self.agree_stop():
            return False
        self.save(step, blocking=True)
        self.finish()
        self.stopped = True
        if supervised():
            sys.stdout.write("%s %d\n" % (STOPPED_MARKER, step))
            sys.stdout.flush()
        logger.info("stopped at step %d for a restart (generation %d)", step, self.generation)
        return True

    def finish(self):
        """Wait for a background save to reach the disk (call before the process exits)."""
        if self.checkpoints is not None:
            self.checkpoints.wait()

    def close(self):
        """Finish saving and stop listening to the supervisor (the process goes on)."""
        self.finish()
        self._closed.set()
