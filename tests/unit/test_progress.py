"""Progress of long phases (gluon_elastic.progress) and the metrics flags: no MXNet needed."""
import argparse
import io
import logging

import pytest

from gluon_elastic import flags
from gluon_elastic.progress import progress, write


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_every_interval_and_at_the_end_when_not_a_terminal(caplog):
    clock = Clock()
    seen = []
    with caplog.at_level(logging.INFO, logger="gluon_elastic"):
        for item in progress(list("abcdefg"), desc="validation", interval=10.0,
                             stream=io.StringIO(), clock=clock):
            seen.append(item)
            clock.now += 4.0  # each item takes 4 s
    assert seen == list("abcdefg")
    assert [r.getMessage() for r in caplog.records] == [
        "validation: 3/7 (43%) in 12.0 s, about 16 s left",
        "validation: 6/7 (86%) in 24.0 s, about 4 s left",
        "validation: 7/7 (100%) in 28.0 s"]


def test_short_phases_unknown_totals_and_other_ranks(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="gluon_elastic"):
        for _ in progress(range(3), desc="checkpoint", interval=30.0, stream=io.StringIO(),
                          clock=clock):
            clock.now += 1.0
        assert caplog.records == []  # shorter than the interval: silent
        for _ in progress(iter(range(2)), desc="indexing", interval=1.0, stream=io.StringIO(),
                          clock=clock):
            clock.now += 1.0
    assert [r.getMessage() for r in caplog.records] == ["indexing: 1 in 1.0 s",
                                                        "indexing: 2 in 2.0 s",
                                                        "indexing: 2 in 2.0 s"]
    # Ranks other than 0 log warnings only (recipe.setup_logging): the iterable comes back as is.
    items = [1, 2]
    with caplog.at_level(logging.WARNING, logger="gluon_elastic"):
        assert progress(items, desc="validation") is items
        assert progress(items, desc="validation", enabled=False) is items


def test_a_bar_on_a_terminal():
    pytest.importorskip("tqdm")
    logging.getLogger("gluon_elastic").setLevel(logging.INFO)
    try:
        terminal = Terminal()
        assert list(progress(range(5), desc="validation", stream=terminal)) == list(range(5))
    finally:
        logging.getLogger("gluon_elastic").setLevel(logging.NOTSET)
    # tqdm draws the bar at once and then at most every 0.1 s; leave=False erases it at the end.
    text = terminal.getvalue()
    assert text.startswith("\rvalidation:   0%|") and "| 0/5 [" in text
    assert text.endswith("\r" + " " * (len(text.split("\r")[1])) + "\r")
    out = io.StringIO()
    write("a line", stream=out)
    assert out.getvalue() == "a line\n"


def test_metrics_flags():
    parser = argparse.ArgumentParser()
    flags.add_metrics_args(parser)
    args = parser.parse_args(["--metrics-file", "run.jsonl", "--metrics-interval", "5"])
    assert (args.metrics_file, args.metrics_interval) == ("run.jsonl", 5)
    assert (parser.parse_args([]).metrics_file, parser.parse_args([]).metrics_interval) == (None, 1)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--metrics-interval", "0"])
    assert info.value.code == 2


def test_listeners_hear_every_item_on_every_rank():
    """What keeps a supervised worker's progress markers going through a long phase."""
    from gluon_elastic import progress as module
    calls = []
    callback = module.add_listener(lambda: calls.append(1))
    try:
        items = list(module.progress(range(5), desc="validation", enabled=False))
    finally:
        module.remove_listener(callback)
    assert items == [0, 1, 2, 3, 4] and len(calls) == 5
    assert list(module.progress(range(3), enabled=False)) == [0, 1, 2] and len(calls) == 5
