"""scripts/discovery.py: schedule parsing, host lists by progress, the generated script."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import discovery  # noqa: E402  pylint: disable=wrong-import-position


def test_parse_schedule_counts_and_host_lists():
    schedule = discovery.parse_schedule("0:2; 40:localhost:1,127.0.0.1:2 ;90:1")
    assert schedule == [(0, [("localhost", 2)]), (40, [("localhost", 1), ("127.0.0.1", 2)]),
                        (90, [("localhost", 1)])]


@pytest.mark.parametrize("text", ["", "5:2", "0:2;0:3", "0:2;9:1;4:3", "0:0", "0:host",
                                  "x:2", "0:localhost:two", "2"])
def test_parse_schedule_refuses_bad_input(text):
    with pytest.raises(ValueError):
        discovery.parse_schedule(text)


def test_hosts_and_world_size_follow_progress():
    schedule = discovery.parse_schedule("0:2;3:3;6:localhost:1,127.0.0.1:1")
    assert [discovery.world_size_at(schedule, p) for p in range(8)] == [2, 2, 2, 3, 3, 3, 2, 2]
    assert discovery.hosts_at(schedule, 100) == [("localhost", 1), ("127.0.0.1", 1)]


def test_progress_file_round_trip_and_missing_file(tmp_path):
    path = str(tmp_path / "progress")
    assert discovery.read_progress(path) == 0
    discovery.write_progress(path, 1234)
    assert discovery.read_progress(path) == 1234
    assert os.listdir(str(tmp_path)) == ["progress"]  # no temporary file left behind


def test_generated_script_prints_the_hosts_of_the_current_progress(tmp_path):
    progress = str(tmp_path / "progress")
    script = discovery.write_script(str(tmp_path / "discover.sh"), "0:2;10:localhost:1,127.0.0.1:1",
                                    progress)
    assert os.access(script, os.X_OK)
    assert subprocess.check_output([script], text=True) == "localhost:2\n"
    discovery.write_progress(progress, 10)
    assert subprocess.check_output([script], text=True) == "localhost:1\n127.0.0.1:1\n"


def test_write_script_refuses_a_bad_schedule(tmp_path):
    with pytest.raises(ValueError, match="start at progress 0"):
        discovery.write_script(str(tmp_path / "d.sh"), "3:2", str(tmp_path / "p"))
    assert not os.path.exists(str(tmp_path / "d.sh"))
