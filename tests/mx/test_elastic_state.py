"""ElasticState and the run loop in one process: commit/restore/sync, sampler in state, errors."""
import http.server
import threading

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_elastic import ElasticTrainer
from gluon_elastic.backends import LocalBackend
from gluon_elastic.data import ElasticSampler
from gluon_elastic import run as elastic_run
from gluon_elastic.state import ElasticState, STATE_FORMAT

NUM_SAMPLES = 24


class RootBackend(LocalBackend):
    """One process playing rank 0: collectives return what the test set as the other ranks' part.

    ``others`` is what the other ranks add to ``sum_over_workers``; ``root_object`` what rank 0
    broadcasts as the elastic state (when this process plays another rank).
    """

    def __init__(self, world_size=1, elastic_driver=False):
        super().__init__("device", world_size=world_size)
        self.elastic_driver = elastic_driver
        self.root_object = None
        self.others = None
        self.calls = []

    def sum_over_workers(self, values):
        self.calls.append(("sum", len(values)))
        return values if self.others is None else values + self.others

    def broadcast_parameters(self, params, root_rank=0):
        self.calls.append(("params", [p.name for p in params]))

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        self.calls.append((name, len(arrays)))

    def send_arrays(self, arrays, receivers, root_rank=0, name="arrays"):
        self.calls.append((name, len(arrays), list(receivers)))

    def broadcast_object(self, obj, root_rank=0, name="object"):
        self.calls.append(("object", name))
        if name == "elastic_state" and self.root_object is not None:
            return self.root_object
        return obj

    def barrier(self):
        self.calls.append(("barrier", None))


def build(backend=None, world_size=2):
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=3), gluon.nn.BatchNorm(in_channels=4), gluon.nn.Dense(1, in_units=4))
    net.initialize(mx.init.Xavier())
    backend = backend or LocalBackend("device", world_size=world_size)
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                             kvstore=backend, local_batch_size=2)
    sampler = ElasticSampler(NUM_SAMPLES, seed=5)
    return net, trainer, sampler


def train_steps(net, trainer, sampler, count):
    """``count`` steps of the emulated world (all ranks' samples in this process)."""
    data = np.arange(NUM_SAMPLES * 3, dtype=np.float32).reshape(NUM_SAMPLES, 3) / 50.0
    taken = 0
    sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
    chunks = [sampler.iter_batches(sizes, rank) for rank in range(trainer.world_size)]
    for batches in zip(*chunks):
        indices = np.concatenate([b[0] for b in batches])
        with autograd.record():
            loss = net(mx.nd.array(data[indices])).square().sum()
        loss.backward()
        trainer.step(global_batch_size=batches[0][1])
        sampler.record(batches[0][1])
        taken += 1
        if taken == count:
            break
    mx.nd.waitall()


def values(net, trainer):
    params = {name: p.data().asnumpy().copy() for name, p in net.collect_params().items()}
    momentum = [a.asnumpy().copy() for a in trainer.momentum_arrays()]
    return params, momentum


def test_state_dict_has_exactly_the_documented_content():
    net, trainer, sampler = build()
    state = ElasticState(net, trainer, sampler, epoch=3, batch=7)
    train_steps(net, trainer, sampler, 2)
    saved = state.state_dict()
    assert set(saved) == {"format", "version", "params", "trainer", "sampler", "user"}
    assert saved["format"] == STATE_FORMAT and saved["version"] == 1
    names = set(net.collect_params().keys())
    assert set(saved["params"]) == names
    assert any(name.endswith("running_mean") for name in names)  # aux parameters included
    for name, param in net.collect_params().items():
        np.testing.assert_array_equal(saved["params"][name], param.data().asnumpy())
    assert isinstance(saved["trainer"], bytes)
    assert saved["sampler"] == sampler.state_dict() and saved["sampler"]["processed"] == 8
    assert saved["user"] == {"epoch": 3, "batch": 7}
    assert state.epoch == 3 and state.batch == 7


def test_restore_returns_to_the_last_commit_exactly():
    net, trainer, sampler = build()
    state = ElasticState(net, trainer, sampler, epoch=0)
    train_steps(net, trainer, sampler, 2)
    state.epoch = 1
    state.commit()
    committed = values(net, trainer)
    committed_counters = (trainer.iteration, trainer.progress, sampler.processed)
    train_steps(net, trainer, sampler, 2)
    state.epoch = 2
    assert trainer.iteration == committed_counters[0] + 2
    state.restore()
    params, momentum = values(net, trainer)
    for name, value in committed[0].items():
        np.testing.assert_array_equal(params[name], value)
    assert len(momentum) == len(committed[1]) > 0
    for got, want in zip(momentum, committed[1]):
        np.testing.assert_array_equal(got, want)
    assert (trainer.iteration, trainer.progress, sampler.processed) == committed_counters
    assert state.epoch == 1


def test_restore_before_any_commit_returns_to_construction():
    net, trainer, sampler = build()
    state = ElasticState(net, trainer, sampler, epoch=0)
    initial = values(net, trainer)
    train_steps(net, trainer, sampler, 3)
    state.restore()
    for name, value in initial[0].items():
        np.testing.assert_array_equal(values(net, trainer)[0][name], value)
    assert trainer.iteration == 0 and sampler.processed == 0


def test_restored_sampler_splits_the_rest_of_the_epoch_over_a_new_world():
    net, trainer, sampler = build(world_size=2)
    state = ElasticState(net, trainer, sampler, epoch=0)
    order = sampler.order()
    train_steps(net, trainer, sampler, 2)          # 8 samples committed at world 2
    state.commit()
    train_steps(net, trainer, sampler, 1)          # 4 more, then a failure rolls them back
    state.restore()
    assert sampler.processed == 8
    trainer.backend.set_world_size(3)              # survivors and a new worker: world 3
    rest = [list(b[0]) for rank in range(3) for b in sampler.iter_batches([2, 2, 2], rank)]
    seen = list(order[:8]) + [i for chunk in rest for i in chunk]
    assert sorted(seen) == list(range(NUM_SAMPLES))
    assert set(order[8:12]) <= set(i for chunk in rest for i in chunk)  # rolled-back work redone


def test_commit_callbacks_see_the_committed_state():
    net, trainer, sampler = build()
    state = ElasticState(net, trainer, sampler, epoch=0)
    seen = []
    state.register_commit_callbacks([lambda s: seen.append((s, s.state_dict()["user"]))])
    state.epoch = 4
    state.commit()
    assert seen == [(state, {"epoch": 4})]


def test_load_state_dict_refuses_foreign_or_mismatched_states():
    net, trainer, sampler = build()
    state = ElasticState(net, trainer, sampler)
    good = state.state_dict()
    with pytest.raises(ValueError, match="format"):
        state.load_state_dict({"format": "something else"})
    newer = dict(good, version=2)
    with pytest.raises(ValueError, match="version"):
        state.load_state_dict(newer)
    name = sorted(good["params"])[0]
    missing = dict(good, params={k: v for k, v in good["params"].items() if k != name})
    with pytest.raises(ValueError, match=name):
        state.load_state_dict(missing)
    reshaped = dict(good, params=dict(good["params"], **{name: np.zeros((7, 7))}))
    with pytest.raises(ValueError, match="shape"):
        state.load_state_dict(reshaped)


def test_reserved_and_uninitialised_inputs_are_refused():
    net, trainer, sampler = build()
    with pytest.raises(ValueError, match="reserved"):
        ElasticState(net, trainer, sampler, generation=1)
    deferred = gluon.nn.Dense(2)
    deferred.initialize()
    with pytest.raises(ValueError, match="not initialised"):
        ElasticState(deferred, trainer)


def test_sync_sends_everything_to_ranks_without_the_state_and_applies_rank_0s_values():
    backend = RootBackend(world_size=2)
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler, epoch=0)
    root_trainer_state = dict(trainer.elastic_state_dict(), iteration=5, progress=20)
    backend.root_object = {"elastic": root_trainer_state, "num_update": 5,
                           "index_update_count": {0: 5}, "generation": 3, "user": {"epoch": 2},
                           "sampler": dict(sampler.state_dict(), epoch=2, processed=12)}
    backend.calls.clear()
    state.sync()  # nobody has synced yet: rank 1 gets the full state
    params = list(net.collect_params().values())
    aux = [p.name for p in params if p.grad_req == "null"]
    num_states = len(trainer.optimizer_state_arrays(first_device=True))
    assert backend.calls == [("sum", 2), ("state", len(params) + num_states, [1]),
                             ("statistics.float32", 1), ("object", "elastic_state")]
    assert num_states == len(trainer.momentum_arrays()) > 0
    assert len(aux) == 2 and all(name.startswith("batchnorm") for name in aux)
    assert state.last_sync_receivers == [1]
    assert (trainer.iteration, trainer.progress) == (5, 20)
    assert (sampler.epoch, sampler.processed) == (2, 12)
    assert state.epoch == 2 and state.generation == 3


@pytest.mark.parametrize("others, receivers", [
    ([0, 4, 4, 4], []),        # every rank at rank 0's iteration: same lineage, same state
    ([0, 4, 0, 4], [2]),       # rank 2 holds nothing known (a joiner)
    ([0, 2, 4, 0], [1, 3]),    # rank 1 rolled back to an older commit; rank 3 joins
])
def test_sync_sends_the_full_state_only_to_ranks_that_lack_it(others, receivers):
    backend = RootBackend(world_size=4)
    net, trainer, sampler = build(backend, world_size=4)
    state = ElasticState(net, trainer, sampler)
    state.sync()              # rank 0 now holds the job's state (others: unknown)
    train_steps(net, trainer, sampler, 3)
    assert trainer.iteration == 3
    backend.others = np.array(others, dtype=np.float64)   # slots: iteration + 1, 0 unknown
    backend.calls.clear()
    state.sync()
    num_arrays = len(list(net.collect_params().values())) + len(trainer.optimizer_state_arrays(first_device=True))
    sent = [call for call in backend.calls if call[0] == "state"]
    assert sent == ([("state", num_arrays, receivers)] if receivers else [])
    assert state.last_sync_receivers == receivers
    assert backend.calls[0] == ("sum", 4)


def test_rank_0_with_a_loaded_or_fresh_state_sends_it_to_every_rank():
    backend = RootBackend(world_size=3)
    net, trainer, sampler = build(backend, world_size=3)
    state = ElasticState(net, trainer, sampler)
    state.sync()
    backend.others = np.array([0, 1, 1], dtype=np.float64)   # ranks 1, 2 hold iteration 0
    state.sync()
    assert state.last_sync_receivers == []
    state.load_state_dict(state.state_dict())                 # e.g. resumed from a checkpoint
    state.sync()
    assert state.last_sync_receivers == [1, 2]


def test_restore_keeps_the_lineage_at_the_commits_iteration():
    backend = RootBackend(world_size=2)
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler)
    state.sync()
    train_steps(net, trainer, sampler, 2)
    state.commit()
    train_steps(net, trainer, sampler, 3)
    state.restore()
    assert trainer.iteration == 2
    backend.others = np.array([0, 3], dtype=np.float64)      # rank 1 restored the same commit
    state.sync()
    assert state.last_sync_receivers == []
    backend.others = np.array([0, 6], dtype=np.float64)      # rank 1 kept its live iteration 5
    state.sync()
    assert state.last_sync_receivers == [1]


def test_sync_into_a_different_world_starts_the_transition():
    backend = RootBackend(world_size=2)
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler)
    train_steps(net, trainer, sampler, 2)
    backend.set_world_size(4)  # the state was committed by a world of 2
    backend.root_object = None
    state.on_reset()
    state.sync()
    assert trainer.transition.start_iter == 2
    assert trainer.transition.target_multiplier == pytest.approx(2.0)  # 4 workers / base 2
    assert trainer.in_ramp


def test_check_host_updates_raises_once_per_announced_change():
    horovod_exceptions = pytest.importorskip("horovod.common.exceptions")
    backend = RootBackend(elastic_driver=True)
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler)
    state.check_host_updates()  # nothing announced
    state.on_hosts_updated(10.0, 1)
    with pytest.raises(horovod_exceptions.HostsUpdatedInterrupt) as info:
        state.check_host_updates()
    assert info.value.skip_sync is True and state.last_host_update == 1
    state.check_host_updates()  # already acted upon
    state.on_hosts_updated(9.0, 2)  # older than the last one seen: ignored
    state.check_host_updates()
    state.on_hosts_updated(11.0, 2)
    state.on_hosts_updated(12.0, 1)
    with pytest.raises(horovod_exceptions.HostsUpdatedInterrupt) as info:
        state.check_host_updates()
    assert info.value.skip_sync is False and state.last_host_update == 3


def test_check_host_updates_is_free_without_an_elastic_driver():
    backend = RootBackend(elastic_driver=False)
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler)
    backend.calls.clear()
    state.on_hosts_updated(10.0, 1)
    state.check_host_updates()
    assert backend.calls == []


def test_trainer_runs_no_collective_under_an_elastic_driver():
    with_driver = RootBackend(elastic_driver=True)
    build(with_driver)
    assert with_driver.calls == []
    without = RootBackend(elastic_driver=False)
    build(without)
    assert ("barrier", None) in without.calls


def test_run_without_elastic_driver_syncs_once_and_calls_once():
    backend = RootBackend()
    net, trainer, sampler = build(backend)
    state = ElasticState(net, trainer, sampler, epoch=0)
    calls = []

    @elastic_run.run
    def train(state, extra):
        calls.append((state.epoch, extra, [c[0] for c in backend.calls]))
        return "done"

    backend.calls.clear()
    assert train(state, 5) == "done"
    assert calls == [(0, 5, ["object"])]   # a world of one has nothing to send


def test_horovod_errors_from_mxnet_are_translated():
    def shut_down():
        raise mx.base.MXNetError("[12:00:00] src/operator.cc:1: Horovod has been shut down. "
                                 "This was caused by an exception on one of the ranks")

    def other():
        raise mx.base.MXNetError("Check failed: shape mismatch")

    with pytest.raises(elastic_run.HorovodInternalError, match="Horovod has been shut down"):
        elastic_run._translated(shut_down)
    with pytest.raises(mx.base.MXNetError, match="shape mismatch"):
        elastic_run._translated(other)
    assert elastic_run._translated(lambda x: x + 1, 1) == 2


def test_ask_rank_and_size_asks_the_rendezvous_store(monkeypatch):
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            body = b"-1,-1,-1,-1,-1,-1" if self.path.endswith(":1") else b"2,3,0,1,2,3"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1")
        monkeypatch.setenv("HOROVOD_GLOO_RENDEZVOUS_PORT", str(server.server_address[1]))
        monkeypatch.setenv("HOROVOD_HOSTNAME", "127.0.0.1")
        monkeypatch.setenv("HOROVOD_LOCAL_RANK", "0")
        assert elastic_run.ask_rank_and_size(timeout=10) == (2, 3, 0, 1, 2, 3)
        monkeypatch.setenv("HOROVOD_LOCAL_RANK", "1")
        assert elastic_run.ask_rank_and_size(timeout=10)[0] == -1
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/rank_and_size/127.0.0.1:0", "/rank_and_size/127.0.0.1:1"]
