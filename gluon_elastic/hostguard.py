"""Run a command on a remote host and take it down when the ``ssh`` session that started it ends.

    ssh HOST 'exec python /path/to/gluon_elastic/hostguard.py -- bash -c "CMD"'

``ssh`` without a terminal sends no hang-up: when the launcher's ``ssh`` client dies, or ``sshd``
drops a session whose client stopped answering (``ClientAliveInterval``: a host cut off from the
network), the remote command lives on, holding its Gloo connections and its slot. This guard
starts the command in a process group of its own and kills that group (SIGTERM, then SIGKILL after
``--grace`` seconds) as soon as its own parent (the ``sshd`` session, or the shell it ran) is
gone, or when it receives SIGHUP, SIGINT or SIGTERM. It exits with the command's exit code
(128 + N for a command killed by signal N).

Standard library only, and run by path rather than with ``-m`` so that a host does not import the
package (and MXNet) just to guard a process.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

__all__ = ["guard", "main"]


def _kill_group(child, grace):
    """SIGTERM the process group of ``child``, SIGKILL it after ``grace`` seconds if anything is
    left (the child is reaped on the way: a zombie would count as alive)."""
    pgid = child.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def guard(command, poll_interval=0.5, grace=2.0):
    """Run ``command`` until it ends or this process's parent goes away.

    Parameters
    ----------
    command : list of str
        The command and its arguments.
    poll_interval : float
        Seconds between checks of the parent.
    grace : float
        Seconds between SIGTERM and SIGKILL of the command's process group.

    Returns
    -------
    int
        The command's exit code, 128 + N when a signal N ended it.
    """
    parent = os.getppid()
    child = subprocess.Popen(command, start_new_session=True)
    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while True:
        try:
            code = child.wait(timeout=poll_interval)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop or os.getppid() != parent:
            # The session is gone (or we were told to stop): nothing may outlive it on this host.
            _kill_group(child, grace)
            code = child.wait()
            break
    return 128 - code if code < 0 else code


def main(argv=None):
    """Command-line entry point; returns the command's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="seconds between checks of the parent (default: %(default)s)")
    parser.add_argument("--grace", type=float, default=2.0,
                        help="seconds between SIGTERM and SIGKILL (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command, after '--'")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after '--'")
    return guard(command, args.poll_interval, args.grace)


if __name__ == "__main__":
    sys.exit(main())
