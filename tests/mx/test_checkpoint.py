"""CheckpointManager: atomic, checksummed files, the last K kept, fallback past damaged files."""
import logging
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer
from gluon_elastic.checkpoint import CheckpointError, CheckpointManager, read_checkpoint


def _state(step):
    """A state dict of the ElasticState shape whose values depend on ``step``."""
    rng = np.random.RandomState(step)
    return {"format": "gluon_elastic.ElasticState", "version": 1,
            "params": {"dense0_weight": rng.rand(3, 4).astype(np.float32),
                       "bn_running_mean": rng.rand(3).astype(np.float32)},
            "trainer": b"\x00trainer-bytes-%d" % step,
            "sampler": {"epoch": 1, "processed": 16 * step, "seed": 0, "num_samples": 4000,
                        "shuffle": True},
            "user": {"step": step}}


def _assert_equal_states(got, want):
    assert got.keys() == want.keys()
    assert got["params"].keys() == want["params"].keys()
    for name, array in want["params"].items():
        assert got["params"][name].dtype == array.dtype
        np.testing.assert_array_equal(got["params"][name], array)
    assert got["trainer"] == want["trainer"]
    assert got["sampler"] == want["sampler"]
    assert got["user"] == want["user"]


def test_round_trip_and_keep_last_k(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    assert manager.load_latest() is None
    for step in (10, 20, 30):
        manager.save(_state(step), step)
    assert manager.steps() == [20, 30]
    assert sorted(os.listdir(tmp_path)) == ["state-000000000020.ckpt", "state-000000000030.ckpt"]
    loaded = manager.load_latest()
    assert (loaded.step, loaded.path, loaded.skipped) == (30, manager.path(30), [])
    _assert_equal_states(loaded.state, _state(30))
    _assert_equal_states(manager.load(20), _state(20))


def test_background_save_is_visible_after_wait(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=3)
    state = _state(5)
    manager.save(state, 5, blocking=False)
    # The state was serialised inside save(): changing it now must not reach the file.
    state["params"]["dense0_weight"][:] = -1.0
    manager.wait()
    _assert_equal_states(manager.load_latest().state, _state(5))


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty"])
def test_damaged_newest_falls_back_to_previous_and_names_it(tmp_path, caplog, damage):
    manager = CheckpointManager(str(tmp_path), keep=3)
    for step in (1, 2, 3):
        manager.save(_state(step), step)
    newest = manager.path(3)
    size = os.path.getsize(newest)
    with open(newest, "r+b") as fout:
        if damage == "truncate":
            fout.truncate(size - 7)
        elif damage == "flip":
            fout.seek(size // 2)
            byte = fout.read(1)
            fout.seek(size // 2)
            fout.write(bytes([byte[0] ^ 0x01]))
        elif damage == "header":
            fout.write(b"NOTACKPT")
        else:
            fout.truncate(0)
    with pytest.raises(CheckpointError, match="state-000000000003.ckpt"):
        read_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="gluon_elastic"):
        loaded = manager.load_latest()
    assert loaded.step == 2
    assert loaded.skipped == [newest]
    _assert_equal_states(loaded.state, _state(2))
    assert any("state-000000000003.ckpt" in record.getMessage() and "falling back"
               in record.getMessage() for record in caplog.records)


def test_all_damaged_gives_none(tmp_path, caplog):
    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(_state(1), 1)
    with open(manager.path(1), "r+b") as fout:
        fout.truncate(40)
    with caplog.at_level(logging.WARNING, logger="gluon_elastic"):
        assert manager.load_latest() is None
    assert "no usable checkpoint" in caplog.text


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=3)
    manager.save(_state(1), 1)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        manager.save({"user": {"x": Unpicklable()}}, 2)
    assert os.listdir(tmp_path) == ["state-000000000001.ckpt"]
    # A temporary file left by a writer that died is removed by the next save.
    open(os.path.join(str(tmp_path), ".tmp-dead.ckpt"), "wb").close()
    manager.save(_state(2), 2)
    assert sorted(os.listdir(tmp_path)) == ["state-000000000001.ckpt", "state-000000000002.ckpt"]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(str(tmp_path), keep=0)
    with pytest.raises(ValueError, match="step"):
        CheckpointManager(str(tmp_path)).path(-1)


def test_trainer_state_round_trip_restores_momentum_and_lr(tmp_path):
    """Parameters and trainer bytes saved and loaded give the same momentum, LR and progress."""
    def build():
        net = gluon.nn.Dense(2, in_units=3)
        net.initialize(mx.init.Constant(0.5))
        trainer = ElasticTrainer(net.collect_params(), "sgd",
                                 {"learning_rate": 0.1, "momentum": 0.9}, local_batch_size=4)
        return net, trainer

    net, trainer = build()
    x = mx.nd.array(np.arange(12).reshape(4, 3))
    for _ in range(3):
        with autograd.record():
            loss = net(x).sum()
        loss.backward()
        trainer.step(4)
    manager = CheckpointManager(str(tmp_path))
    # Gluon names differ between two nets built in one process: key by structural position.
    manager.save({"params": {str(i): p.data().asnumpy() for i, p in
                             enumerate(net.collect_params().values())},
                  "trainer": trainer.states_bytes()}, trainer.iteration)

    net2, trainer2 = build()
    loaded = manager.load_latest().state
    for i, param in enumerate(net2.collect_params().values()):
        param.set_data(mx.nd.array(loaded["params"][str(i)]))
    trainer2.load_states_bytes(loaded["trainer"])
    assert (trainer2.iteration, trainer2.progress) == (3, 12)
    assert trainer2.learning_rate == trainer.learning_rate
    for got, want in zip(trainer2.momentum_arrays(), trainer.momentum_arrays()):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())
    for got, want in zip(net2.collect_params().values(), net.collect_params().values()):
        np.testing.assert_array_equal(got.data().asnumpy(), want.data().asnumpy())
