"""Start and clean up the process trees of multi-process tests and benchmarks.

horovodrun starts each worker in a process group of its own and may leave some behind, so a job is
ended by killing the descendants of its launcher, every process whose command line carries the
job's unique marker (a log directory or progress file of the test), and the launcher's group.
Processes that carry no marker on their command line (the scheduler and servers of a KVStore group
run ``python -c "import mxnet"``) are found by a token in their environment instead.
"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # gluon_elastic, for the host names
    sys.path.insert(0, ROOT)


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
    for pid in processes_with_marker(marker):
        try:
            victims.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_with_token(var, token):
    """Pids of live processes whose environment carries ``var=token`` (zombies left out: they are
    dead, only not yet reaped); the launchers' own search."""
    from gluon_elastic.launch import processes_with_env

    return processes_with_env(var, token)


def kill_processes_with_token(var, token, grace=0.5):
    """SIGKILL every process that carries ``var=token`` still alive after ``grace`` seconds.

    Parameters
    ----------
    var, token : str
        As for :func:`processes_with_token`.
    grace : float
        Time a process that was just stopped gets to finish exiting before it counts as left
        behind.

    Returns
    -------
    list of int
        The pids that were killed: a test asserts it is empty.
    """
    time.sleep(grace)
    leftovers = processes_with_token(var, token)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


def json_lines(text, key=None):
    """The JSON objects of ``text``, one per line that holds one, after any prefix.

    Parameters
    ----------
    text : str
        Output in which launchers put a prefix such as ``[1,0]<stdout>:`` or ``[worker 0] ``
        before each line.
    key : str, optional
        Keep only lines that mention ``"key"`` (other lines with braces are not records).

    Returns
    -------
    list of dict
    """
    rows = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0 and (key is None or '"%s"' % key in line):
            rows.append(json.loads(line[start:]))
    return rows


def processes_with_marker(marker):
    """Pids of live processes whose command line carries ``marker``."""
    import psutil

    found = []
    for candidate in psutil.process_iter(["cmdline"]):
        if marker in " ".join(candidate.info["cmdline"] or ()) + " ":
            found.append(candidate.pid)
    return found


def _communicate(proc, timeout, marker, leftovers=None):
    """Output of ``proc`` and its exit code (None after ``timeout``); its whole job is killed.

    ``leftovers``, a list, receives the pids of the job's processes still alive when ``proc``
    ended on its own (before they are killed).
    """
    output, code = b"", None
    try:
        output, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
        if leftovers is not None:
            leftovers.extend(processes_with_marker(marker))
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_job(proc, marker)
        if code is None:  # what the job wrote before it was killed tells why it hung
            output = proc.communicate()[0]
        proc.wait()
    return code, output.decode(errors="replace")


def _horovodrun():
    return os.path.join(os.path.dirname(sys.executable), "horovodrun")


def run_horovodrun(np_workers, argv, timeout, marker, env_extra=None, preexec_fn=None):
    """Run ``argv`` under ``horovodrun --gloo -np N`` on this machine's loopback.

    Parameters
    ----------
    np_workers : int
        Number of workers, all on ``localhost``.
    argv : list of str
        Worker command line; it must carry ``marker``.
    timeout : float
        Seconds before the job is killed.
    marker : str
        A string found only on the command lines of this job's processes.
    env_extra : dict, optional
        Environment on top of ``OMP_NUM_THREADS=1``, ``PYTHONUNBUFFERED=1``, ``PYTHONPATH=ROOT``.
    preexec_fn : callable, optional
        Run in the launcher before it starts (its limits pass on to the workers).

    Returns
    -------
    (int or None, str)
        Exit code of horovodrun (None after a timeout) and its output.
    """
    command = [_horovodrun(), "--gloo", "-np", str(np_workers), "-H", "localhost:%d" % np_workers,
               "--network-interface", "lo"] + list(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    env.update(env_extra or {})
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=preexec_fn)
    return _communicate(proc, timeout, marker)


def loopback_hosts():
    """Names of this machine on which Horovod starts workers locally (see the launcher's)."""
    from gluon_elastic.horovodrun import local_host_names

    return local_host_names()


def run_elastic_horovodrun(work_dir, argv, schedule, np_start, min_np, max_np, timeout,
                           env_extra=None, launcher_args=None, leftovers=None):
    """Run ``argv`` under elastic ``horovodrun`` with schedule-driven discovery on this machine.

    ``schedule`` is a ``scripts/discovery.py`` schedule over the training progress that rank 0
    writes to ``work_dir/progress``, whose path is appended to ``argv`` as ``--progress-file``.
    That path is the job's marker: every process of the job is killed at the end, also on failure
    or timeout.

    Parameters
    ----------
    work_dir : str
        Folder of the discovery script and the progress file (created if missing).
    argv : list of str
        Worker command line, without ``--progress-file``.
    schedule : str
        Discovery schedule.
    np_start, min_np, max_np : int
        horovodrun's ``-np``, ``--min-np`` and ``--max-np``.
    timeout : float
        Seconds before the job is killed.
    env_extra : dict, optional
        Environment on top of ``OMP_NUM_THREADS=1``, ``PYTHONUNBUFFERED=1`` and
        ``MXNET_MKLDNN_ENABLED=0``.
    launcher_args : list of str, optional
        Run the project's launcher (``python -m gluon_elastic.horovodrun``) with these extra
        arguments instead of ``horovodrun --gloo``.
    leftovers : list, optional
        Receives the pids of the job's processes still alive when the launcher ended on its own.

    Returns
    -------
    (int or None, str)
        Exit code of horovodrun (None after a timeout) and its output.
    """
    if os.path.join(ROOT, "scripts") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import discovery  # pylint: disable=import-outside-toplevel

    os.makedirs(work_dir, exist_ok=True)
    progress_file = os.path.join(work_dir, "progress")
    script = discovery.write_script(os.path.join(work_dir, "discover.sh"), schedule, progress_file)
    if launcher_args is None:
        launcher = [_horovodrun(), "--gloo"]
    else:
        launcher = [sys.executable, "-m", "gluon_elastic.horovodrun"] + list(launcher_args)
    command = launcher + ["-np", str(np_start), "--min-np", str(min_np), "--max-np", str(max_np),
                          "--host-discovery-script", script, "--network-interface", "lo"] \
        + (["--"] if launcher_args is not None else []) + list(argv) \
        + ["--progress-file", progress_file]
    # Plain CPU kernels: these jobs check elastic behaviour, not MKLDNN.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MXNET_MKLDNN_ENABLED="0",
               PYTHONPATH=ROOT)
    env.update(env_extra or {})
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return _communicate(proc, timeout, progress_file, leftovers)


# Carried by every process of run_kvstore_group (worker code may read it to find its group).
GROUP_TOKEN_VAR = "GLUON_ELASTIC_GROUP_TEST_TOKEN"


def run_kvstore_group(command, num_workers, num_servers=1, timeout=150, env_extra=None):
    """Run a KVStore group (``gluon_elastic.launch.Group``) to its end; kill what is left.

    Every process of the group carries a token variable; after the group ends (or its timeout),
    any process still carrying it is killed, and the test fails if there was one.

    Returns
    -------
    (int, str)
        The group's exit code and its prefixed output.
    """
    import io
    import uuid

    from gluon_elastic.launch import Group

    output, token = io.StringIO(), uuid.uuid4().hex
    env = {GROUP_TOKEN_VAR: token}
    env.update(env_extra or {})
    group = Group(command, num_workers, num_servers, output=output, env=env)
    try:
        code = group.start().wait(timeout=timeout)
    finally:
        leftovers = kill_processes_with_token(GROUP_TOKEN_VAR, token)
    assert leftovers == [], "processes left behind: %s" % leftovers
    return code, output.getvalue()
