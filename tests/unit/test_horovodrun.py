"""The Horovod launcher's pieces in one process: its driver's questions, the supervisor's loop."""
import os
import sys
import time

import pytest

from gluon_elastic import horovodrun

pytest.importorskip("horovod.runner.elastic.driver")


class FakeRendezvous:
    """What the driver calls on its rendezvous server."""

    def __init__(self):
        self.plans = []

    def init(self, host_alloc_plan):
        self.plans.append([(s.hostname, s.rank) for s in host_alloc_plan])

    def stop(self):
        pass


@pytest.fixture
def driver():
    from horovod.runner.elastic.discovery import FixedHosts

    hosts = FixedHosts({"a": 1, "b": 1})
    driver = horovodrun.ElasticDriver(FakeRendezvous(), hosts, 1, 4)
    driver.fixed_hosts = hosts
    yield driver
    driver.stop()


def wait_for(condition, seconds=10.0):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "condition not met in %.0f s" % seconds
        time.sleep(0.05)


def slot_ranks(driver, method):
    return {host: getattr(driver, method)(host, 0).rank for host in ("a", "b", "c", "d")}


@pytest.mark.timeout(60)
def test_next_assignment_reads_the_next_world_without_registering(driver):
    wait_for(lambda: driver._host_manager.current_hosts.count_available_slots() == 2)
    driver._update_host_assignments(driver._host_manager.current_hosts)
    current = slot_ranks(driver, "get_slot_info")
    # Horovod orders the first hosts through a set: a and b hold ranks 0 and 1 in either order.
    assert sorted(current.values()) == [-1, -1, 0, 1] and current["c"] == current["d"] == -1
    driver.fixed_hosts.set({"a": 1, "c": 1})  # a replacement: b out, c in
    wait_for(lambda: "c" in driver._host_manager.current_hosts.host_assignment_order)
    # The oldest host keeps the lowest rank; the joiner comes last.
    assert slot_ranks(driver, "next_slot_info") == {"a": 0, "b": -1, "c": 1, "d": -1}
    # Nothing registered, and the current world is untouched until its round completes.
    assert driver._worker_registry.count("READY") == 0
    assert slot_ranks(driver, "get_slot_info") == current


@pytest.mark.timeout(60)
def test_a_world_without_survivor_is_reported_not_raised(driver):
    wait_for(lambda: driver._host_manager.current_hosts.count_available_slots() == 2)
    driver._update_host_assignments(driver._host_manager.current_hosts)
    driver.fixed_hosts.set({"c": 1, "d": 1})
    wait_for(lambda: "d" in driver._host_manager.current_hosts.host_assignment_order)
    driver.resume()
    assert driver.no_survivor == ("no worker of the previous world survives (its hosts a,b, "
                                  "listed now c,d)")
    # The previous world's workers are told they have no rank, so they leave on their own.
    assert slot_ranks(driver, "get_slot_info") == {"a": -1, "b": -1, "c": -1, "d": -1}
    assert driver.stop_timer is not None
    driver.stop_timer.cancel()


@pytest.mark.timeout(60)
def test_a_lost_host_notification_is_sent_again(driver):
    wait_for(lambda: driver._host_manager.current_hosts.count_available_slots() == 2)
    driver._update_host_assignments(driver._host_manager.current_hosts)
    notified = []
    driver._notify_workers_host_changes = lambda hosts, update: notified.append(int(update))
    driver.stale_assignment_seconds = 0.5
    driver.fixed_hosts.set({"a": 1, "b": 1, "c": 1})
    # Discovery announces the new host once (2: added); the workers never acted on it, so the
    # watcher announces it again while the world differs from the hosts listed.
    wait_for(lambda: len(notified) >= 3)
    assert set(notified) == {2}
    driver._update_host_assignments(driver._host_manager.current_hosts)  # the round is done
    count = len(notified)
    time.sleep(2.5)
    assert len(notified) == count


@pytest.mark.timeout(60)
def test_a_discovery_change_is_seen_within_0_3_s(tmp_path):
    import statistics

    listing = tmp_path / "hosts"
    listing.write_text("a:1\n")
    script = tmp_path / "discover.sh"
    script.write_text("#!/bin/sh\ncat %s\n" % listing)
    script.chmod(0o755)
    driver = horovodrun.ElasticDriver(FakeRendezvous(),
                                      horovodrun.DiscoveryScript(str(script), 1), 1, 4)
    try:
        assert driver.discovery_interval == horovodrun.DISCOVERY_INTERVAL == 0.2
        wait_for(lambda: driver._host_manager.current_hosts.count_available_slots() == 1)
        delays = []
        for count in (2, 3, 2, 3, 2):
            listing.write_text("".join("%s:1\n" % host for host in "abc"[:count]))
            tic = time.monotonic()
            while driver._host_manager.current_hosts.count_available_slots() != count:
                assert time.monotonic() - tic < 10
                time.sleep(0.002)
            delays.append(time.monotonic() - tic)
    finally:
        driver.stop()
    # One interval plus the script's run at most; half an interval in the middle.
    assert statistics.median(delays) < 0.3, delays


@pytest.mark.timeout(60)
def test_a_joiner_is_started_before_the_survivors_are_told(driver):
    import threading

    from horovod.runner.common.util import hosts as hvd_hosts

    wait_for(lambda: driver._host_manager.current_hosts.count_available_slots() == 2)
    driver._update_host_assignments(driver._host_manager.current_hosts)
    started, release = [], threading.Event()

    def create_worker(slot_info, events):  # a worker process that runs until released
        started.append((slot_info.hostname, slot_info.rank, slot_info.size))
        release.wait(30)
        return 0, time.time()

    driver._create_worker_fn = create_worker
    notified = []
    driver._notify_workers_host_changes = lambda hosts, update: notified.append(int(update))
    driver.fixed_hosts.set({"a": 1, "b": 1, "c": 1})
    wait_for(lambda: started)
    time.sleep(0.5)  # several discovery rounds: the survivors are still not told
    assert started == [("c", 2, 3)] and notified == []
    assert driver.prepared_state("c", 0) == "prepared" and driver.prepared_state("a", 0) == "no"
    assert driver.join_answer("c", 0) == "wait"
    driver.prepared_ready("c", 0)
    assert notified == [2]  # added
    # The survivors' round forms the world of 3; the joiner started ahead is let in, not started.
    pending = driver._update_host_assignments(driver._host_manager.current_hosts)
    driver._start_worker_processes(pending)
    time.sleep(0.2)
    assert started == [("c", 2, 3)]
    assert driver.join_answer("c", 0) == driver.get_slot_info("c", 0).to_response_string()
    # A later world that starts c anew (after c left) starts it the usual way.
    driver._start_worker_processes(pending)
    wait_for(lambda: len(started) == 2)
    assert driver.prepared_state("c", 0) == "no"
    assert driver.join_answer("c", 0) == hvd_hosts.INVALID_SLOT_INFO.to_response_string()
    driver.stop()  # the fake workers end with the driver stopped: their exits are ignored
    release.set()


def fake_driver(codes):
    """A driver command whose generation g exits with ``codes[g]`` (negative: killed by signal)."""

    def command(np):
        return [sys.executable, "-c",
                "import os, signal, sys\n"
                "code = %r[int(os.environ['GLUON_ELASTIC_GENERATION'])]\n"
                "print('np', %d, 'checkpoints in', os.environ['GLUON_ELASTIC_CHECKPOINT_DIR'])\n"
                "sys.stdout.flush()\n"
                "os.kill(os.getpid(), -code) if code < 0 else sys.exit(code)\n" % (codes, np)]

    return command


@pytest.mark.timeout(60)
def test_supervisor_relaunches_until_the_job_finishes(tmp_path, capfd):
    from gluon_elastic.checkpoint import CheckpointManager

    CheckpointManager(str(tmp_path)).save({"step": 12}, step=12)
    supervisor = horovodrun.Supervisor(fake_driver([-9, horovodrun.EXIT_NO_SURVIVOR, 0]), 4, 2,
                                       str(tmp_path), max_restarts=3)
    assert supervisor.run() == 0
    lines = capfd.readouterr().out.splitlines()
    checkpoint = os.path.join(str(tmp_path), "state-000000000012.ckpt")
    assert lines == [
        "np 4 checkpoints in %s" % tmp_path,
        "[gluon_elastic.horovodrun] the driver was killed by signal 9; relaunching on the listed "
        "hosts from %s (restart 1, 1 of 3 allowed per 3600 s)" % checkpoint,
        "np 2 checkpoints in %s" % tmp_path,
        "[gluon_elastic.horovodrun] no worker of the previous world survives; relaunching on the "
        "listed hosts from %s (restart 2, 2 of 3 allowed per 3600 s)" % checkpoint,
        "np 2 checkpoints in %s" % tmp_path,
        "[gluon_elastic.horovodrun] job finished after 2 relaunch(es)"]


@pytest.mark.timeout(60)
def test_supervisor_gives_up_at_the_restart_limit(tmp_path, capfd):
    supervisor = horovodrun.Supervisor(fake_driver([1, -9, 0]), 2, 1, str(tmp_path),
                                       max_restarts=1)
    assert supervisor.run() == 137
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("[")]
    assert lines == [
        "[gluon_elastic.horovodrun] the driver exited with code 1 (workers failed); relaunching "
        "on the listed hosts from no checkpoint yet (from the start) (restart 1, 1 of 1 allowed "
        "per 3600 s)",
        "[gluon_elastic.horovodrun] giving up: the driver was killed by signal 9 and the restart "
        "budget (--max-restarts 1 per --restart-window 3600 s) is used up; last checkpoint: no "
        "checkpoint yet (from the start)"]


def test_driver_command_repeats_the_launcher_flags():
    args = horovodrun.parse_args(["-np", "3", "--min-np", "2", "--max-np", "4", "-H",
                                  "a:1,b:2", "--network-interface", "lo",
                                  "--blacklist-cooldown-range", "1,5", "--", "python", "train.py",
                                  "--epochs", "2"])
    assert horovodrun.driver_command(args, 2) == [
        sys.executable, "-m", "gluon_elastic.horovodrun", "--driver", "-np", "2",
        "--slots-per-host", "1", "--elastic-timeout", "600", "--start-timeout", "30",
        "--discovery-interval", "0.2", "--min-np", "2", "--max-np", "4", "-H", "a:1,b:2", "--network-interface", "lo",
        "--blacklist-cooldown-range", "1,5", "--", "python", "train.py", "--epochs", "2"]


@pytest.mark.parametrize("argv, message", [
    (["-np", "2", "--min-np", "3", "-H", "a:4", "--", "x"], "need --min-np <= -np <= --max-np"),
    (["-np", "2", "-H", "a:2", "--blacklist-cooldown-range", "5,1", "--", "x"], "MIN <= MAX"),
    (["-np", "2", "-H", "a:2"], "give the worker command after '--'"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        horovodrun.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_the_plan_of_sixteen_hosts_of_eight_gpus(capsys):
    from gluon_elastic import horovodrun
    hosts = ",".join("node%02d:8" % h for h in range(16))
    assert horovodrun.main(["-np", "128", "-H", hosts, "--dry-run", "--", "python",
                            "train.py"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 128
    assert lines[0] == "host=node00 rank=0 local_rank=0 devices=gpu(0)"
    assert lines[13] == "host=node01 rank=13 local_rank=5 devices=gpu(5)"
    assert lines[127] == "host=node15 rank=127 local_rank=7 devices=gpu(7)"


def test_dry_run_prints_the_plan_of_sixteen_hosts_of_two_processes_of_four_gpus(capsys):
    from gluon_elastic import horovodrun
    hosts = ",".join("node%02d:2" % h for h in range(16))
    assert horovodrun.main(["-np", "32", "-H", hosts, "--num-gpus", "4", "--dry-run", "--",
                            "python", "train.py", "--num-gpus", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 32
    assert lines[0] == "host=node00 rank=0 local_rank=0 devices=gpu(0),gpu(1),gpu(2),gpu(3)"
    assert lines[13] == "host=node06 rank=13 local_rank=1 devices=gpu(4),gpu(5),gpu(6),gpu(7)"
    assert lines[31] == "host=node15 rank=31 local_rank=1 devices=gpu(4),gpu(5),gpu(6),gpu(7)"

