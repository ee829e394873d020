"""Supervisor membership parsing and the restart agent's save/stop logic, without MXNet.

That these modules import with MXNet blocked is checked in test_imports_without_mxnet.py.
"""
import io
import os
import time

import pytest

from gluon_elastic.backends.local import LocalBackend
from gluon_elastic.restart import ENV, STOPPED_MARKER, RestartAgent
from gluon_elastic.supervisor import (Supervisor, is_local_host, parse_args, parse_hosts,
                                      read_discovery, world_of)


def test_parse_hosts():
    assert parse_hosts("localhost:2,127.0.0.1:1") == [("localhost", 2), ("127.0.0.1", 1)]
    assert parse_hosts("a:1\n\n# comment\nb\na:2\nc:0\n") == [("a", 3), ("b", 1)]
    with pytest.raises(ValueError, match="HOST:SLOTS.*'a:x'"):
        parse_hosts("a:x")
    assert world_of([("a", 2), ("b", 3)]) == ["a", "a", "b", "b", "b"]
    assert world_of([("a", 2), ("b", 3)], max_workers=3) == ["a", "a", "b"]


def test_read_discovery_script(tmp_path):
    script = tmp_path / "hosts.sh"
    script.write_text("#!/bin/sh\necho localhost:2\necho 127.0.0.1:1\n")
    script.chmod(0o755)
    assert read_discovery(str(script)) == [("localhost", 2), ("127.0.0.1", 1)]
    failing = tmp_path / "fail.sh"
    failing.write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with code 3: nope"):
        read_discovery(str(failing))


def test_local_host_names():
    assert is_local_host("localhost") and is_local_host("127.0.0.1") and is_local_host("127.0.1.1")
    assert not is_local_host("no-such-host.invalid")


def test_cli_validation():
    args = parse_args(["-n", "2", "--", "python", "x.py"])
    assert args.host_list == [("localhost", 2)] and args.command == ["python", "x.py"]
    assert parse_args(["-H", "a:2,b:1", "--", "x"]).host_list == [("a", 2), ("b", 1)]
    for bad in (["-n", "2"], ["-n", "0", "--", "x"], ["-H", "a:q", "--", "x"], ["--", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(ValueError, match="exactly one of hosts and discovery"):
        Supervisor(["x"])
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor(["x"], hosts=[("localhost", 1)], max_restarts=-1)


class _State:
    def __init__(self):
        self.value = 0
        self.loaded = None

    def state_dict(self):
        return {"format": "gluon_elastic.ElasticState", "version": 1, "params": {},
                "trainer": b"", "sampler": None, "user": {"value": self.value}}

    def load_state_dict(self, state):
        self.loaded = state
        self.value = state["user"]["value"]


def test_agent_saves_on_interval_and_stops_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV["supervised"], raising=False)
    state = _State()
    agent = RestartAgent(LocalBackend(None), state, checkpoint_dir=str(tmp_path),
                         commit_interval=3, keep=2, max_save_overhead=None)
    assert agent.restore() is None
    for step in range(1, 8):
        state.value = step
        assert agent.after_step(step) is False
    agent.finish()
    assert agent.checkpoints.steps() == [3, 6]
    agent.request_stop()
    state.value = 8
    assert agent.after_step(8) is True
    assert agent.checkpoints.steps() == [6, 8]
    assert STOPPED_MARKER not in capsys.readouterr().out  # markers only under a supervisor

    restarted = _State()
    loaded = RestartAgent(LocalBackend(None), restarted, checkpoint_dir=str(tmp_path)).restore()
    assert (loaded.step, restarted.value) == (8, 8)


class _Clock:
    """Stands in for the ``time`` module: ``monotonic`` moves only when the test says."""

    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


class _SlowState(_State):
    """Serialising it takes 0.05 s of the fake clock."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def state_dict(self):
        self.clock.now += 0.05
        return super().state_dict()


def test_agent_keeps_saving_within_the_overhead_budget(tmp_path, monkeypatch):
    import gluon_elastic.checkpoint
    import gluon_elastic.restart

    monkeypatch.delenv(ENV["supervised"], raising=False)
    clock = _Clock()
    monkeypatch.setattr(gluon_elastic.restart, "time", clock)
    monkeypatch.setattr(gluon_elastic.checkpoint, "time", clock)   # writes cost 0 s
    agent = RestartAgent(LocalBackend(None), _SlowState(clock), checkpoint_dir=str(tmp_path),
                         commit_interval=3, max_save_overhead=0.25)
    for step in range(1, 7):
        agent.after_step(step)
        agent.finish()
    # The save at 3 cost 0.05 s, so the next may start 0.05 / 0.25 = 0.2 s after it: 6 is skipped.
    assert agent.checkpoints.steps() == [3]
    clock.now += 0.2
    for step in range(7, 10):
        agent.after_step(step)
        agent.finish()
    assert agent.checkpoints.steps() == [3, 9]
    assert agent.save_count == 2 and agent.save_foreground_seconds == pytest.approx(0.1)
    agent.request_stop()
    assert agent.after_step(10) is True  # a stop request saves whatever the budget
    assert agent.checkpoints.steps() == [3, 9, 10]
    with pytest.raises(ValueError, match="max_save_overhead"):
        RestartAgent(LocalBackend(None), _State(), max_save_overhead=0)


def test_agent_markers_under_supervisor(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV["supervised"], "1")
    monkeypatch.setenv(ENV["checkpoint_dir"], str(tmp_path))
    read, write = os.pipe()
    saved_stdin = os.dup(0)
    os.dup2(read, 0)
    try:
        agent = RestartAgent(LocalBackend(None), _State(), commit_interval=None,
                             heartbeat_interval=0.0)
        assert agent.checkpoints.directory == str(tmp_path)
        os.write(write, b"save\n")
        for _ in range(100):
            if agent.stop_requested:
                break
            time.sleep(0.02)
        assert agent.stop_requested
        assert agent.after_step(5) is True
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "@gluon_elastic:progress -"
        assert out[-2:] == ["@gluon_elastic:progress 5", "%s 5" % STOPPED_MARKER]
        assert agent.checkpoints.steps() == [5]
    finally:
        agent.close()
        os.dup2(saved_stdin, 0)
        os.close(write)
        os.close(read)
        os.close(saved_stdin)


def test_process_plan_of_sixteen_hosts_of_eight_gpus():
    from gluon_elastic.launch import format_plan, process_plan
    slot_hosts = ["node%02d" % h for h in range(16) for _ in range(8)]
    plan = process_plan(slot_hosts)
    assert len(plan) == 128
    assert [e["rank"] for e in plan] == list(range(128))
    assert [(e["host"], e["local_rank"]) for e in plan[7:10]] == [("node00", 7), ("node01", 0),
                                                                  ("node01", 1)]
    assert all(e["local_size"] == 8 and e["devices"] == [e["local_rank"]] for e in plan)
    assert format_plan(plan).splitlines()[9] == "host=node01 rank=9 local_rank=1 devices=gpu(1)"


def test_process_plan_of_sixteen_hosts_of_two_processes_of_four_gpus():
    """Local rank r with N GPUs per process drives gpu(r*N) .. gpu(r*N+N-1)."""
    from gluon_elastic.launch import format_plan, process_plan
    plan = process_plan(["node%02d" % h for h in range(16) for _ in range(2)], 4)
    assert len(plan) == 32
    assert [(e["host"], e["rank"], e["local_rank"], e["devices"]) for e in plan[1:3]] == [
        ("node00", 1, 1, [4, 5, 6, 7]), ("node01", 2, 0, [0, 1, 2, 3])]
    assert sorted(d for e in plan if e["host"] == "node15" for d in e["devices"]) == \
        list(range(8))
    assert format_plan(plan).splitlines()[31] == \
        "host=node15 rank=31 local_rank=1 devices=gpu(4),gpu(5),gpu(6),gpu(7)"


def test_launchers_print_the_plan_without_starting_anything(capsys):
    from gluon_elastic import launch, supervisor
    hosts = ",".join("node%02d:8" % h for h in range(16))
    assert supervisor.main(["-H", hosts, "--dry-run", "--", "python", "train.py"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 128
    assert lines[0] == "host=node00 rank=0 local_rank=0 devices=gpu(0)"
    assert lines[127] == "host=node15 rank=127 local_rank=7 devices=gpu(7)"
    hosts = ",".join("node%02d:2" % h for h in range(16))
    assert supervisor.main(["-H", hosts, "--num-gpus", "4", "--dry-run", "--", "python",
                            "train.py", "--num-gpus", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 32
    assert lines[0] == "host=node00 rank=0 local_rank=0 devices=gpu(0),gpu(1),gpu(2),gpu(3)"
    assert lines[3] == "host=node01 rank=3 local_rank=1 devices=gpu(4),gpu(5),gpu(6),gpu(7)"
    assert launch.main(["-n", "3", "--dry-run", "--", "python", "train.py"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "host=localhost rank=%d local_rank=%d devices=gpu(%d)" % (i, i, i) for i in range(3)]
    assert launch.main(["-n", "2", "--num-gpus", "2", "--dry-run", "--", "python",
                        "train.py"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "host=localhost rank=0 local_rank=0 devices=gpu(0),gpu(1)",
        "host=localhost rank=1 local_rank=1 devices=gpu(2),gpu(3)"]


def test_kvstore_worker_local_rank_comes_from_the_launcher(monkeypatch):
    """The KVStore backend reads the local rank the launcher gives each worker (a backend
    stand-in avoids starting a KVStore group); tests/mx/test_devices.py turns it into devices."""
    from gluon_elastic.backends.kvstore import KVStoreBackend
    monkeypatch.setenv("GLUON_ELASTIC_LOCAL_RANK", "5")
    backend = KVStoreBackend.__new__(KVStoreBackend)   # no store: only local_rank is read
    assert backend.local_rank == 5


def test_restart_budget_counts_failures_in_a_sliding_window(monkeypatch):
    """3 restarts allowed per window: failures spread over more than the window never end the
    job; a fourth failure within one window does."""
    from gluon_elastic.supervisor import Outcome, Supervisor
    clock = [0.0]
    monkeypatch.setattr("gluon_elastic.supervisor.time.monotonic", lambda: clock[0])

    def run(failure_times):
        failures = iter(failure_times)
        sup = Supervisor(["true"], hosts=[("localhost", 1)], max_restarts=3, restart_window=100.0,
                         output=io.StringIO())

        class FakeGroup:
            stop_requested_wall = None
            def start(self):
                return self
            def stop(self):
                pass

        def watch(group, hosts):
            try:
                clock[0] = next(failures)
            except StopIteration:
                return Outcome("done")
            return Outcome("failed", "worker 0 exited with code 1", 1)

        monkeypatch.setattr("gluon_elastic.supervisor.SupervisedGroup",
                            lambda *a, **k: FakeGroup())
        sup._watch = watch
        return sup.run(), sup.restarts

    assert run([10.0, 60.0, 120.0, 180.0, 240.0, 300.0]) == (0, 6)   # at most 2 per 100 s
    assert run([10.0, 20.0, 30.0, 40.0]) == (1, 3)                   # the fourth in 100 s stops
