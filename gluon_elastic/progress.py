"""Progress of long phases (data indexing, evaluation, checkpoint writing, studies) on rank 0.

    for item in progress(items, desc="indexing annotations"):
        ...

Contract
--------
Shown only where the ``gluon_elastic`` logger is enabled for INFO, which
:func:`gluon_elastic.recipe.setup_logging` and the main job arrange for rank 0 alone (it follows
rank 0 after a reset), so no rank needs to be passed and other ranks print nothing. Where the
output stream is a terminal, a tqdm bar is drawn (and removed when the phase ends); elsewhere (a log
file, a pipe, ``horovodrun``'s prefixed output) a line ``desc: n/total (p%) in s, about r s left``
is logged every ``interval`` seconds, and one at the end of a phase that printed any, because
carriage-return bars turn into unreadable runs of text in files. Without tqdm installed the lines are used everywhere.
Imports no MXNet.
"""
import logging
import sys
import time

__all__ = ["progress", "write", "add_listener", "remove_listener"]

logger = logging.getLogger("gluon_elastic")


# Called once per item of every progress() phase, on every rank (see add_listener).
_listeners = []


def add_listener(callback):
    """Call ``callback()`` for every item of every phase shown by :func:`progress`, on every rank.

    A restart agent passes its heartbeat, so that a long evaluation or indexing phase tells the
    supervisor the worker is alive (the callback rate-limits itself). Returns ``callback``.
    """
    _listeners.append(callback)
    return callback


def remove_listener(callback):
    """Stop calling ``callback`` (added by :func:`add_listener`)."""
    if callback in _listeners:
        _listeners.remove(callback)


def _notify(iterable):
    for item in iterable:
        for callback in list(_listeners):
            callback()
        yield item


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _lines(iterable, total, desc, interval, clock):
    start = last = clock()
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = clock()
        if now - last >= interval:
            last = now
            logger.info("%s", _line(desc, count, total, now - start))
    # A phase shorter than the interval stays silent; a long one says when it ended.
    if last > start:
        logger.info("%s", _line(desc, count, total, clock() - start, done=True))


def _line(desc, count, total, elapsed, done=False):
    if total:
        text = "%s: %d/%d (%.0f%%) in %.1f s" % (desc, count, total, 100.0 * count / total, elapsed)
        if not done and count:
            text += ", about %.0f s left" % (elapsed / count * (total - count))
        return text
    return "%s: %d in %.1f s" % (desc, count, elapsed)


def progress(iterable, total=None, desc="progress", interval=30.0, stream=None, enabled=None,
             clock=time.monotonic):
    """Iterate over ``iterable`` showing progress on rank 0 (see the module docstring).

    Parameters
    ----------
    iterable : iterable
    total : int, optional
        Number of items (default: ``len(iterable)`` when it has one).
    desc : str
        What the phase is, e.g. ``"validation"``.
    interval : float
        Seconds between progress lines when the output is not a terminal.
    stream : file, optional
        Where a bar goes (default ``sys.stderr``).
    enabled : bool, optional
        Show progress; default: where the ``gluon_elastic`` logger is enabled for INFO (rank 0).
        Lines go to that logger whatever this says, so a program passing True configures it.
    clock : callable
        Monotonic seconds (tests pass a fake one).

    Returns
    -------
    iterable
        Yields the items of ``iterable``, unchanged.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if _listeners:
        iterable = _notify(iterable)
    if not (logger.isEnabledFor(logging.INFO) if enabled is None else enabled):
        return iterable
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, total=total, desc=desc, file=stream, leave=False,
                        dynamic_ncols=True)
    return _lines(iterable, total, desc, interval, clock)


def write(text, stream=None):
    """Print a line of ``text`` without breaking a progress bar drawn on the same terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        from tqdm import tqdm
    except ImportError:
        stream.write(text + "\n")
        stream.flush()
        return
    tqdm.write(text, file=stream)
