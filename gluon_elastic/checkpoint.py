"""Checkpoint files of the elastic state: atomic, checksummed, the last K kept.

Contract
--------
:meth:`CheckpointManager.save` writes a state dict (the shape of ``ElasticState.state_dict()``:
``{"format", "version", "params", "trainer", "sampler", "user"}``, or any picklable dict) under a
step number. A file either holds a complete, verified state or is ignored:

1. the bytes go to a temporary file in the same directory, which is flushed and ``fsync``-ed, then
   renamed over the final name (``os.replace`` is atomic on POSIX), then the directory is
   ``fsync``-ed so the rename itself survives a crash;
2. the file starts with a fixed header: magic, format version, payload length and the SHA-256 of
   the payload. A truncated file (length mismatch) or a corrupted one (digest mismatch, bad magic,
   unreadable pickle) is detected on load, reported by name in a warning of the ``gluon_elastic``
   logger, and the next older file is used;
3. after each save only the newest ``keep`` files remain.

Files are named ``<prefix>-<step:012d>.ckpt``; the newest is the one with the largest step. Loading
unpickles: read checkpoints only from directories you trust. Imports no MXNet.
"""
import hashlib
import logging
import os
import pickle
import re
import struct
import tempfile
import threading
import time

__all__ = ["CheckpointManager", "CheckpointError", "read_checkpoint"]

logger = logging.getLogger("gluon_elastic")

MAGIC = b"GLUONEL\x00"
FILE_VERSION = 1
# magic, file version (uint32), payload length (uint64), SHA-256 of the payload (32 bytes)
_HEADER = struct.Struct("<8sIQ32s")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a checkpoint; names the file."""


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_payload(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    header = _HEADER.pack(MAGIC, FILE_VERSION, len(payload), hashlib.sha256(payload).digest())
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as fout:
            fout.write(header)
            fout.write(payload)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return _HEADER.size + len(payload)


def read_checkpoint(path):
    """Read and verify a file written by :meth:`CheckpointManager.save`.

    Raises
    ------
    CheckpointError
        If the file is unreadable, truncated, corrupted or not a checkpoint; the message names it.
    """
    try:
        with open(path, "rb") as fin:
            data = fin.read()
    except OSError as err:
        raise CheckpointError("checkpoint %s cannot be read: %s" % (path, err)) from err
    if len(data) < _HEADER.size:
        raise CheckpointError("checkpoint %s is truncated: %d bytes, shorter than its header"
                              % (path, len(data)))
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError("checkpoint %s is not a gluon_elastic checkpoint (bad magic %r)"
                              % (path, magic))
    if version > FILE_VERSION:
        raise CheckpointError("checkpoint %s has file version %d; this gluon_elastic reads up to %d"
                              % (path, version, FILE_VERSION))
    payload = memoryview(data)[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError("checkpoint %s is truncated: payload of %d bytes, header says %d"
                              % (path, len(payload), length))
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint %s is corrupted: SHA-256 of the payload does not match"
                              % path)
    try:
        return pickle.loads(payload)
    except Exception as err:  # a verified payload that does not unpickle: wrong writer
        raise CheckpointError("checkpoint %s does not unpickle: %s" % (path, err)) from err


class CheckpointManager:
    """The checkpoints of one job in one directory.

    Parameters
    ----------
    directory : str
        Where the files live (created if missing). For a group spread over several hosts it must be
        a shared file system, since every worker reads the state it restarts from.
    keep : int
        How many of the newest checkpoints to keep (K >= 1; 2 or more gives a fallback).
    prefix : str
        File name prefix.

    Examples
    --------
    >>> manager = CheckpointManager("/tmp/job", keep=3)
    >>> manager.save(state.state_dict(), step=trainer.iteration)
    >>> loaded = manager.load_latest()   # None when nothing usable was saved yet
    >>> if loaded is not None:
    ...     state.load_state_dict(loaded.state)
    """

    def __init__(self, directory, keep=3, prefix="state"):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError("keep must be an integer >= 1, got %r" % (keep,))
        if not re.fullmatch(r"[A-Za-z0-9_.]+", prefix or ""):
            raise ValueError("prefix must be letters, digits, '_' or '.', got %r" % (prefix,))
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.prefix = prefix
        self._pattern = re.compile(r"%s-(\d{12})\.ckpt$" % re.escape(prefix))
        self._thread = None
        self._error = None
        self.last_write_seconds = 0.0   # checksum, write, fsync, rename and prune of the last save
        self.last_write_cpu_seconds = 0.0   # CPU time of the writing thread in that save
        self.total_write_seconds = 0.0
        os.makedirs(self.directory, exist_ok=True)

    def path(self, step):
        """File name of the checkpoint of ``step``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError("step must be an integer >= 0, got %r" % (step,))
        return os.path.join(self.directory, "%s-%012d.ckpt" % (self.prefix, step))

    def steps(self):
        """Steps of the checkpoint files present, oldest first (not verified)."""
        found = []
        for name in os.listdir(self.directory):
            match = self._pattern.match(name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def save(self, state, step, blocking=True):
        """Write ``state`` as the checkpoint of ``step`` and keep only the newest ``keep``.

        Parameters
        ----------
        state : dict or callable
            Picklable state; it is serialised before this call returns, so the caller may go on
            changing its arrays. Or a callable returning a context manager that yields the
            state: it is entered by the writer (in the background thread when ``blocking`` is
            False), which serialises the state before leaving it, so serialisation happens off
            the caller's thread while the context guards the arrays
            (:meth:`gluon_elastic.state.ElasticState.committed_state`).
        step : int
            Step number (the trainer's iteration), the order of checkpoints.
        blocking : bool
            False writes, fsyncs and prunes in a background thread (one at a time; the next save
            or :meth:`wait` waits for the previous one and re-raises its error).

        Returns
        -------
        str
            The file name.
        """
        path = self.path(step)
        payload = state if callable(state) else pickle.dumps(state, protocol=5)
        self.wait()
        if blocking:
            self._write(path, payload)
        else:
            self._thread = threading.Thread(target=self._write_in_thread, args=(path, payload),
                                            name="gluon_elastic-checkpoint", daemon=True)
            self._thread.start()
        return path

    def _write_in_thread(self, path, payload):
        try:
            self._write(path, payload)
        except BaseException as err:  # handed to the next save() or wait()
            self._error = err

    def _write(self, path, payload):
        tic, cpu_tic = time.monotonic(), time.thread_time()
        if callable(payload):
            with payload() as state:
                payload = pickle.dumps(state, protocol=5)
        _write_payload(path, payload)
        self.prune()
        self.last_write_seconds = time.monotonic() - tic
        self.last_write_cpu_seconds = time.thread_time() - cpu_tic
        self.total_write_seconds += self.last_write_seconds

    @property
    def writing(self):
        """Whether a background save is still under way."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self):
        """Wait for a background save to finish; re-raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def prune(self):
        """Delete all but the newest ``keep`` checkpoints, and temporary files of dead writers."""
        # One writer per directory (rank 0), and prune runs right after its write: a temporary
        # file still present belongs to a writer that died before its rename.
        stale = [name for name in os.listdir(self.directory)
                 if name.startswith(".tmp-") and name.endswith(".ckpt")]
        paths = [self.path(step) for step in self.steps()[:-self.keep]]
        for path in paths + [os.path.join(self.directory, name) for name in stale]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def load(self, step):
        """The verified state of ``step`` (raises :class:`CheckpointError`)."""
        return read_checkpoint(self.path(step))

    def load_latest(self):
        """The newest checkpoint that verifies, or None when there is none.

        A file that fails verification is reported by name (a warning of the ``gluon_elastic``
        logger) and the next older one is tried.

        Returns
        -------
        Loaded or None
            ``.state`` (the dict saved), ``.step``, ``.path`` and ``.skipped`` (files rejected).
        """
        skipped = []
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                state = read_checkpoint(path)
            except CheckpointError as err:
                logger.warning("%s; falling back to the previous checkpoint", err)
                skipped.append(path)
                continue
            return Loaded(state, step, path, skipped)
        if skipped:
            logger.warning("no usable checkpoint in %s: all %d files failed verification",
                           self.directory, len(skipped))
        return None

    def __repr__(self):
        return "CheckpointManager(%r, keep=%d)" % (self.directory, self.keep)


class Loaded:
    """A checkpoint read back: ``state``, ``step``, ``path`` and ``skipped`` (rejected newer files)."""

    __slots__ = ("state", "step", "path", "skipped")

    def __init__(self, state, step, path, skipped):
        self.state = state
        self.step = step
        self.path = path
        self.skipped = list(skipped)

    def __repr__(self):
        return "Loaded(step=%d, path=%r)" % (self.step, self.path)
