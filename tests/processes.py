"""Clean-up of the process trees that multi-process tests start.

horovodrun starts each worker in a process group of its own and may leave some behind, so a job is
ended by killing the descendants of its launcher, every process whose command line carries the
job's unique marker (a log directory or progress file of the test), and the launcher's group.
"""
import os
import signal


def kill_job(proc, marker):
    """Kill ``proc`` (a ``subprocess.Popen`` started with ``start_new_session=True``) and its job.

    Parameters
    ----------
    proc : subprocess.Popen
        The launcher (for example ``horovodrun``).
    marker : str
        A string found only on the command lines of this job's processes.
    """
    import psutil

    victims = []
    try:
        victims.extend(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    for candidate in psutil.process_iter(["cmdline"]):
        if marker in " ".join(candidate.info["cmdline"] or ()) + " ":
            victims.append(candidate)
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Exit statuses by which horovodrun reports a worker that crashed in native code or was killed
# by the kernel (segfault, abort, out-of-memory kill), as opposed to a Python failure.
_CRASH_MARKS = ("exit with status code 139", "exit with status code 134", "Segmentation fault",
                "Out of memory")


def native_crash(output, planned_kills=0):
    """Whether a failed horovodrun job's ``output`` shows a native crash of a worker.

    ``planned_kills`` SIGKILLs (status 137) are part of the test's own schedule; any further one
    counts as a crash (the kernel's out-of-memory killer also sends SIGKILL).
    """
    if any(mark in output for mark in _CRASH_MARKS):
        return True
    return output.count("exit with status code 137") > planned_kills
