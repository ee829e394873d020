"""Worker for tests/dist/test_horovod_broadcast.py and benchmarks/horovod_broadcast_race.py.

``exact``: under ``horovodrun -np 2``. Horovod's own broadcast ops are replaced by functions that
raise, then HorovodBackend broadcasts arrays, a Gluon parameter and an object from each root in
turn; every rank prints one JSON line with what it received (array bytes in hex).

``stress``: under ``horovodrun -np 1``. Broadcasts 100 small arrays and one object per round for
``--seconds``, through HorovodBackend or, with ``--horovod-broadcast``, through Horovod's own
``broadcast_`` (which crashes on a loaded machine); prints the number of rounds.
"""
import argparse
import json
import sys
import time

import mxnet as mx
import numpy as np

# Names longer than 15 characters live on the heap (no small-string buffer), so a read of a
# freed name sees reused memory.
LONG_NAME = "a.fairly.long.tensor.name"


def rank_values(rank, dtype):
    """Values each rank starts with: specials for floats, different on every rank."""
    if np.dtype(dtype).kind == "f":
        specials = [-0.0, np.inf, -np.inf, np.nan, 1e-30, -3.25e7]
        return np.array(specials + [rank * 10.0 + i / 7.0 for i in range(4)], dtype=dtype)
    return np.arange(10, dtype=dtype) + rank * 100


def exact(backend):
    import horovod.mxnet as hvd

    def forbidden(*args, **kwargs):
        raise AssertionError("Horovod's broadcast op was called")

    hvd.broadcast = hvd.broadcast_ = hvd.broadcast_object = forbidden
    rank = backend.rank
    for root in range(backend.world_size):
        out = {"rank": rank, "root": root, "arrays": {}}
        for dtype in ("float32", "float64", "int32", "int64", "uint8"):
            array = mx.nd.array(rank_values(rank, dtype), dtype=dtype)
            backend.broadcast_arrays([array], root_rank=root, name="arrays." + dtype)
            out["arrays"][dtype] = array.asnumpy().tobytes().hex()
        param = mx.gluon.Parameter("weight", shape=(10,))
        param.initialize(mx.init.Constant(0))
        param.set_data(mx.nd.array(rank_values(rank, "float32")))
        backend.broadcast_parameters([param], root_rank=root)
        out["parameter"] = param.data().asnumpy().tobytes().hex()
        sent = {"rank": rank, "blob": bytes(range(256)) * (rank + 1), "text": "é" * rank}
        received = backend.broadcast_object(sent, root_rank=root, name=LONG_NAME)
        out["object"] = [received["rank"], received["blob"].hex(), received["text"]]
        print(json.dumps(out), flush=True)
    backend.barrier()


def stress(backend, seconds, horovod_broadcast):
    import horovod.mxnet as hvd

    arrays = [mx.nd.full((4,), 1.5 + i) for i in range(100)]
    rounds, end = 0, time.time() + seconds
    while time.time() < end:
        for index, array in enumerate(arrays):
            if horovod_broadcast:
                hvd.broadcast_(array, root_rank=0, name="%s.%d" % (LONG_NAME, index))
            else:
                backend.broadcast_arrays([array], name="%s.%d" % (LONG_NAME, index))
        if not horovod_broadcast:
            assert backend.broadcast_object({"round": rounds}, name=LONG_NAME)["round"] == rounds
        mx.nd.waitall()
        rounds += 1
    assert all((array.asnumpy() == 1.5 + i).all() for i, array in enumerate(arrays))
    print(json.dumps({"rounds": rounds}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("exact", "stress"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--horovod-broadcast", action="store_true",
                        help="stress Horovod's own broadcast_ instead of the backend's")
    parser.add_argument("--tag", default="", help="text that marks this job's processes")
    args = parser.parse_args(argv)
    from gluon_elastic.backends.horovod import HorovodBackend

    backend = HorovodBackend()
    if args.mode == "exact":
        exact(backend)
    else:
        stress(backend, args.seconds, args.horovod_broadcast)
    import horovod.mxnet as hvd

    hvd.shutdown()


if __name__ == "__main__":
    sys.exit(main())
