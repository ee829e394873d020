"""Metrics files (gluon_elastic.metrics) of a real ElasticTrainer in one process, and their plot.

The world changes through an emulated LocalBackend; failures, resets and restarts are driven the
way gluon_elastic.run.run and the restart agent drive them. Times come from a fake clock, so
throughput values are exact.
"""
import json
import logging
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer
from gluon_elastic.backends import LocalBackend
from gluon_elastic.metrics import MetricsWriter, read_records
from gluon_elastic.plot import plot_runs
from gluon_elastic.run import HorovodInternalError, HostsUpdatedInterrupt

LOCAL_BATCH_SIZE = 2
WORLD_CHANGE_LINE = re.compile(
    r"world change at iteration (\d+): world (\d+) -> (\d+), global batch (\d+) -> (\d+), "
    r"k=[\d.]+, lr [\d.e-]+ -> target [\d.e-]+, (ramp over (\d+) iterations|immediate)")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class RankedBackend(LocalBackend):
    """An emulated world whose rank the test can move, as a reset moves rank 0."""

    def __init__(self, world_size):
        super().__init__(None, world_size=world_size)
        self.current_rank = 0

    @property
    def rank(self):
        return self.current_rank


def make_trainer(world_size=1):
    net = gluon.nn.Dense(1, in_units=3, use_bias=False)
    net.initialize(mx.init.Constant(1.0))
    backend = RankedBackend(world_size)
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE, ramp_per_k=2)
    return net, trainer, backend


def train_step(net, trainer):
    with autograd.record():
        loss = net(mx.nd.ones((trainer.global_batch_size, 3))).sum()
    loss.backward()
    trainer.step()


def events(records, name=None):
    return [r for r in records if r["kind"] == "event" and (name is None or r["event"] == name)]


def test_steps_and_world_changes_match_the_trainer_log(tmp_path, caplog):
    path = str(tmp_path / "run.jsonl")
    clock = Clock()
    net, trainer, backend = make_trainer()
    metrics = MetricsWriter(path, trainer, clock=clock)
    metrics.start()
    # Worlds by step: 1, 1, 1, 2, 2, 2, 1, 1 (changes before iterations 3 and 6).
    worlds = [1, 1, 1, 2, 2, 2, 1, 1]
    with caplog.at_level(logging.INFO, logger="gluon_elastic"):
        for step, world_size in enumerate(worlds):
            backend.set_world_size(world_size)
            train_step(net, trainer)
            clock.now += 0.5
            metrics.step(epoch=step // 4, loss=1.0 / (step + 1))
    metrics.epoch_end(1, loss=0.25, samples_per_second=10.0, validation={"accuracy": 0.5})
    metrics.close()
    records = read_records(path)
    assert [r["kind"] for r in records] == (["start"] + ["step"] * 3 + ["event"] + ["step"] * 3
                                            + ["event"] + ["step"] * 2 + ["epoch"])
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["iteration"] for r in steps] == list(range(1, 9))
    assert [r["world_size"] for r in steps] == worlds
    assert [r["global_batch_size"] for r in steps] == [LOCAL_BATCH_SIZE * w for w in worlds]
    assert [r["epoch"] for r in steps] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [r["loss"] for r in steps] == [1.0 / (s + 1) for s in range(8)]
    # One step per 0.5 s of the fake clock: twice the step's global batch per second.
    assert [r["samples_per_second"] for r in steps] == [2 * LOCAL_BATCH_SIZE * w for w in worlds]
    assert [r["progress"] for r in steps] == list(np.cumsum([LOCAL_BATCH_SIZE * w for w in worlds]))
    # LR: 0.1 at world 1; growth x2 ramps over T = 2 * 2 = 4 iterations starting at iteration 3;
    # the shrink at iteration 6 (mid-ramp, multiplier 1.75) cuts to 1x at once.
    assert [r["lr"] for r in steps] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.125, 0.15, 0.1, 0.1])
    # One event per line of the trainer's log, with the same values.
    logged = [WORLD_CHANGE_LINE.search(r.getMessage()) for r in caplog.records
              if "world change" in r.getMessage()]
    assert len(logged) == 2 and all(logged)
    changes = events(records, "world_change")
    assert [(e["iteration"], e["world_size_from"], e["world_size"], e["global_batch_size_from"],
             e["global_batch_size"], e["ramp_iterations"]) for e in changes] == \
        [(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)),
          int(m.group(7) or 0)) for m in logged] == [(3, 1, 2, 2, 4, 4), (6, 2, 1, 4, 2, 0)]
    assert [e["k"] for e in changes] == [2.0, 0.5]
    assert records[-1] == {"kind": "epoch", "time": clock.now, "epoch": 1, "iteration": 8,
                           "loss": 0.25, "samples_per_second": 10.0,
                           "validation": {"accuracy": 0.5}}


def test_interval_thins_steps_but_not_events(tmp_path):
    path = str(tmp_path / "run.jsonl")
    net, trainer, backend = make_trainer()
    metrics = MetricsWriter(path, trainer, interval=3, clock=Clock())
    metrics.start()
    for world_size in [1, 2, 2, 2, 2, 1, 1]:
        backend.set_world_size(world_size)
        train_step(net, trainer)
        metrics.step(0, loss=1.0)
    records = read_records(path)
    assert [r["iteration"] for r in records if r["kind"] == "step"] == [3, 6]
    assert [(e["iteration"], e["world_size"]) for e in events(records)] == [(1, 2), (5, 1)]
    with pytest.raises(ValueError, match="positive integer"):
        MetricsWriter(path, trainer, interval=0)


def test_failure_reset_and_rollback_through_watch(tmp_path):
    """run.run's sequence: the function fails, the state goes back to the last commit, Horovod
    resets on a smaller world, the function runs again."""
    path = str(tmp_path / "run.jsonl")
    clock = Clock()
    net, trainer, backend = make_trainer(world_size=3)
    metrics = MetricsWriter(path, trainer, clock=clock)
    metrics.start()
    state = type("State", (), {"generation": 0})()
    calls = []

    @metrics.watch
    def fit(state):
        calls.append(trainer.iteration)
        for _ in range(5 if len(calls) == 1 else 2):
            train_step(net, trainer)
            metrics.step(0, loss=1.0)
        if len(calls) == 1:
            raise HorovodInternalError("Horovod has been shut down")
        if len(calls) == 2:
            raise HostsUpdatedInterrupt(False)
        return "done"

    with pytest.raises(HorovodInternalError):
        fit(state)
    trainer.iteration = 2            # state.restore() to the commit at iteration 2
    backend.set_world_size(2)        # the reset: one worker fewer
    state.generation = 1
    with pytest.raises(HostsUpdatedInterrupt):
        fit(state)
    backend.set_world_size(3)        # a worker joins
    state.generation = 2
    assert fit(state) == "done"
    assert calls == [0, 2, 4]
    records = read_records(path)
    summary = [(e["event"], e.get("iteration"), e.get("world_size_from"), e.get("world_size"))
               for e in events(records)]
    assert summary == [("failure", 5, None, 3), ("reset", None, 3, 2), ("rollback", 2, None, None),
                       ("world_change", 2, 3, 2), ("reset", None, 2, 3),
                       ("world_change", 4, 2, 3)]
    failure, reset, rollback = events(records)[:3]
    assert failure["error"] == "Horovod has been shut down"
    assert (reset["cause"], reset["generation"]) == ("failure", 1)
    assert (rollback["iteration_from"], rollback["lost_iterations"]) == (5, 3)
    assert events(records, "reset")[1]["cause"] == "hosts_updated"
    steps = [r["iteration"] for r in records if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 3, 4, 5, 6]


def test_failure_seen_by_the_next_rank_0_is_written_after_the_reset(tmp_path):
    """Rank 0 died: the survivor (rank 1 at the failure) becomes rank 0 and writes the failure."""
    path = str(tmp_path / "run.jsonl")
    net, trainer, backend = make_trainer(world_size=2)
    backend.current_rank = 1
    metrics = MetricsWriter(path, trainer, clock=Clock())
    metrics.start()
    state = type("State", (), {"generation": 0})()
    calls = []

    @metrics.watch
    def fit(state):
        calls.append(1)
        train_step(net, trainer)
        metrics.step(0, loss=1.0)
        if len(calls) == 1:
            raise mx.base.MXNetError("Gloo: connection closed by peer")
        return None

    with pytest.raises(mx.base.MXNetError):
        fit(state)
    backend.current_rank = 0
    backend.set_world_size(1)
    trainer.iteration = 0
    fit(state)
    records = read_records(path)
    # Nothing before the reset: this process was not rank 0 (no start record either).
    assert [r["kind"] for r in records] == ["event"] * 4 + ["step"]
    assert [e["event"] for e in records[:4]] == ["failure", "reset", "rollback", "world_change"]
    assert records[0]["error"] == "Gloo: connection closed by peer"
    assert records[0]["iteration"] == 1 and records[2]["lost_iterations"] == 1


def test_restart_appends_and_reports_the_rollback_a_fresh_run_truncates(tmp_path, monkeypatch):
    path = str(tmp_path / "run.jsonl")
    net, trainer, backend = make_trainer(world_size=2)
    metrics = MetricsWriter(path, trainer, clock=Clock())
    metrics.start()
    for _ in range(6):
        train_step(net, trainer)
        metrics.step(0, loss=1.0)
    metrics.close()
    # A relaunched group (generation 1) of 3 workers restores the checkpoint of iteration 4.
    monkeypatch.setenv("GLUON_ELASTIC_GENERATION", "1")
    net, trainer, backend = make_trainer(world_size=3)
    trainer.iteration = 4
    metrics = MetricsWriter(path, trainer, clock=Clock(2000.0))
    metrics.start(resumed=True)
    train_step(net, trainer)
    metrics.step(0, loss=1.0)
    metrics.close()
    records = read_records(path)
    assert [r["kind"] for r in records] == ["start"] + ["step"] * 6 + ["start", "event", "event",
                                                                       "event", "step"]
    restart, rollback, change = records[8:11]
    assert (restart["event"], restart["iteration"], restart["iteration_from"],
            restart["generation"], restart["world_size"]) == ("restart", 4, 6, 1, 3)
    assert (rollback["event"], rollback["iteration_from"], rollback["iteration"],
            rollback["lost_iterations"]) == ("rollback", 6, 4, 2)
    assert (change["event"], change["iteration"], change["world_size_from"],
            change["world_size"]) == ("world_change", 4, 2, 3)
    # A relaunched Horovod job (generation 2) loads its durable commit inside run.run, after
    # start(): the restart is recorded when the watched function first runs.
    monkeypatch.setenv("GLUON_ELASTIC_GENERATION", "2")
    net, trainer, backend = make_trainer(world_size=1)
    metrics = MetricsWriter(path, trainer, clock=Clock(3000.0))
    metrics.start()
    trainer.iteration = 3

    @metrics.watch
    def fit(state):
        train_step(net, trainer)
        metrics.step(0, loss=1.0)

    fit(type("State", (), {"generation": 2})())
    records = read_records(path)[12:]
    assert [(r["kind"], r.get("event"), r.get("iteration"), r.get("iteration_from"))
            for r in records] == [("start", None, 0, None), ("event", "restart", 3, 5),
                                  ("event", "rollback", 3, 5), ("event", "world_change", 3, None),
                                  ("step", None, 4, None)]
    assert (records[1]["generation"], records[3]["world_size_from"]) == (2, 3)
    # A fresh run (first launch, nothing resumed) starts the file again.
    monkeypatch.setenv("GLUON_ELASTIC_GENERATION", "0")
    net, trainer, backend = make_trainer()
    MetricsWriter(path, trainer, clock=Clock()).start()
    assert [r["kind"] for r in read_records(path)] == ["start"]


def test_nothing_is_written_without_a_file_or_off_rank_0(tmp_path):
    net, trainer, backend = make_trainer(world_size=2)
    metrics = MetricsWriter(None, trainer)
    metrics.start()
    metrics.step(0, loss=1.0)
    assert not metrics.enabled
    backend.current_rank = 1
    path = tmp_path / "run.jsonl"
    other = MetricsWriter(str(path), trainer)
    other.start()
    train_step(net, trainer)
    other.step(0, loss=1.0)
    assert not path.exists()


def test_read_records_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"kind": "start", "time": 1}\n{"kind": "step", "ti')
    assert read_records(str(path)) == [{"kind": "start", "time": 1}]
    path.write_text('{"kind": "start", "time": 1}\nnot json\n{"kind": "step", "time": 2}\n')
    with pytest.raises(ValueError, match="run.jsonl:2 is not a JSON line"):
        read_records(str(path))


def test_plot_draws_overlaid_runs_with_events(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    paths = []
    for number, worlds in enumerate(([1, 1, 2, 2, 2, 1], [2, 2, 2, 4, 4, 4])):
        path = str(tmp_path / ("run%d.jsonl" % number))
        clock = Clock()
        net, trainer, backend = make_trainer(world_size=worlds[0])
        metrics = MetricsWriter(path, trainer, clock=clock)
        metrics.start()
        for step, world_size in enumerate(worlds):
            backend.set_world_size(world_size)
            train_step(net, trainer)
            clock.now += 1.0
            metrics.step(0, loss=2.0 / (step + 1))
        metrics.close()
        paths.append(path)
    out = str(tmp_path / "run.png")
    drawn = plot_runs(paths, out, labels=["a", "b"], title="two runs")
    assert drawn == {"a": {"steps": 6, "events": {"world_change": 2}},
                     "b": {"steps": 6, "events": {"world_change": 1}}}
    pixels = image.imread(out)
    assert pixels.shape[:2] == (1100, 1300)          # figsize 13 x 11 inches at 100 dpi
    rgb = pixels[:, :, :3]
    drawn_pixels = (rgb < 0.9).any(axis=2).mean()    # not white: axes, curves, text
    assert 0.02 < drawn_pixels < 0.5
    # Both runs' colours (matplotlib's first two: C0 blue, C1 orange) appear.
    blue = (np.abs(rgb - np.array([0x1f, 0x77, 0xb4]) / 255.0) < 0.05).all(axis=2).sum()
    orange = (np.abs(rgb - np.array([0xff, 0x7f, 0x0e]) / 255.0) < 0.05).all(axis=2).sum()
    assert blue > 500 and orange > 500
    with pytest.raises(ValueError, match="2 labels for 1 metrics files"):
        plot_runs(paths[:1], out, labels=["a", "b"])


def test_plot_command_line(tmp_path):
    pytest.importorskip("matplotlib")
    from gluon_elastic import plot

    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "start", "time": 0.0},
        {"kind": "step", "time": 1.0, "iteration": 1, "lr": 0.1, "world_size": 1, "loss": 1.0,
         "samples_per_second": 10.0},
        {"kind": "event", "event": "failure", "time": 1.5, "iteration": 1},
        {"kind": "step", "time": 2.0, "iteration": 2, "lr": 0.1, "world_size": 1, "loss": 0.5,
         "samples_per_second": 12.0}]) + "\n")
    out = tmp_path / "out.png"
    assert plot.main([str(path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"kind": "start", "time": 0}\n')
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(empty), "-o", str(out)])
    assert exit_info.value.code == 2
