"""The KVStore launcher: output prefixes, exit codes, signals, and no process left behind."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from gluon_elastic import launch
from gluon_elastic.launch import Group

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable-next=wrong-import-position
from processes import kill_job, kill_processes_with_token  # noqa: E402

pytestmark = pytest.mark.dist
# Every process of a group inherits this variable: the scheduler and servers, whose command line
# names nothing of the test, are found by it.
TOKEN_VAR = "GLUON_ELASTIC_LAUNCH_TEST_TOKEN"


def script(tmp_path, body):
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_group_runs_and_prefixes_output(tmp_path):
    command = script(tmp_path, """
        import mxnet as mx
        kv = mx.kv.create("dist_sync")
        print("hello from rank", kv.rank, "of", kv.num_workers, flush=True)
        kv._barrier()
    """)
    output, token = io.StringIO(), uuid.uuid4().hex
    group = Group(command, 2, 1, output=output, env={TOKEN_VAR: token})
    try:
        code = group.start().wait(timeout=90)
    finally:
        leftovers = kill_processes_with_token(TOKEN_VAR, token)
    assert leftovers == []
    assert code == 0
    lines = output.getvalue().splitlines()
    hellos = sorted(line.split("] ", 1)[1] for line in lines if "hello" in line)
    assert hellos == ["hello from rank 0 of 2", "hello from rank 1 of 2"]
    assert all(line.startswith("[worker ") for line in lines if "hello" in line)
    assert not any(alive(p.pid) and p.poll() is None for p in group.procs.values())


@pytest.mark.timeout(120)
def test_first_failure_stops_the_group_and_is_returned(tmp_path):
    # Worker with launch index 1 exits 7 at once; the other would block forever in the KVStore.
    command = script(tmp_path, """
        import os, sys, time
        if os.environ["GLUON_ELASTIC_LAUNCH_INDEX"] == "1":
            sys.exit(7)
        import mxnet as mx
        kv = mx.kv.create("dist_sync")
        time.sleep(600)
    """)
    output, token = io.StringIO(), uuid.uuid4().hex
    group = Group(command, 2, 1, output=output, env={TOKEN_VAR: token})
    try:
        group.start()
        started = time.monotonic()
        code = group.wait(timeout=100)
        elapsed = time.monotonic() - started
    finally:
        leftovers = kill_processes_with_token(TOKEN_VAR, token)
    assert leftovers == []
    assert code == 7
    assert elapsed < 60
    assert "worker 1 exited with code 7" in output.getvalue()
    for proc in group.procs.values():
        assert proc.poll() is not None and not alive(proc.pid)


@pytest.mark.timeout(120)
def test_cli_forwards_sigterm_and_leaves_nothing(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    command = script(tmp_path, """
        import os, time
        open(os.path.join(%r, str(os.getpid())), "w").close()
        time.sleep(600)
    """ % str(pid_dir))
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "gluon_elastic.launch", "-n", "2", "--"]
                            + command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **{TOKEN_VAR: token}), start_new_session=True)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(pid_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        worker_pids = [int(name) for name in os.listdir(pid_dir)]
        assert len(worker_pids) == 2
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        time.sleep(0.5)
        survivors = [pid for pid in worker_pids if alive(pid)]
    finally:
        # The launcher starts every process in a session of its own: killing its group alone
        # would leave them behind when the test fails.
        kill_job(proc, str(tmp_path))
        proc.wait()
        for name in os.listdir(pid_dir):
            try:
                os.kill(int(name), signal.SIGKILL)
            except ProcessLookupError:
                pass
        leftovers = kill_processes_with_token(TOKEN_VAR, token)
    assert proc.returncode != 0
    assert survivors == [], out.decode()[-2000:]
    assert leftovers == [], out.decode()[-2000:]


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.parse_args(["-n", "0", "--", "python", "x.py"])
    assert exit_info.value.code == 2
    assert "-n/--num-workers: expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch.parse_args(["-n", "2"])
