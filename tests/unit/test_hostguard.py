"""gluon_elastic/hostguard.py: a remote command ends with the session that started it."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUARD = os.path.join(ROOT, "gluon_elastic", "hostguard.py")


@pytest.mark.timeout(60)
def test_exit_code_is_the_commands():
    assert subprocess.run([sys.executable, GUARD, "--", "sh", "-c", "exit 7"]).returncode == 7
    # A command killed by signal N: 128 + N, as a shell reports it.
    assert subprocess.run([sys.executable, GUARD, "--", "sh", "-c", "kill -9 $$"]).returncode \
        == 128 + signal.SIGKILL


@pytest.mark.timeout(60)
def test_command_dies_with_the_guards_parent():
    # The parent stands for the sshd session: it starts the guard and is SIGKILLed.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
         "sys.argv[1], '--poll-interval', '0.1', '--grace', '1', '--', 'sleep', '300']); "
         "time.sleep(300)", GUARD], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        sleeper = None
        while sleeper is None and time.monotonic() < deadline:
            for proc in psutil.Process(parent.pid).children(recursive=True):
                if proc.name() == "sleep":
                    sleeper = proc
            time.sleep(0.05)
        assert sleeper is not None
        guard = sleeper.parent()
        parent.kill()
        parent.wait()
        # The guard polls its parent every 0.1 s; SIGTERM ends `sleep` at once.
        gone, alive = psutil.wait_procs([sleeper, guard], timeout=5)
        assert alive == []
        assert sorted(p.pid for p in gone) == sorted([sleeper.pid, guard.pid])
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if sleeper is not None and sleeper.is_running():  # in a session of its own
            sleeper.kill()
