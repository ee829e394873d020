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
