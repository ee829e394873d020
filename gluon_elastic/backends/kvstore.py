"""MXNet KVStore backend for several processes (``dist_sync``, ``dist_device_sync``).

ps-lite reads ``DMLC_NUM_WORKER`` once, so the group size is fixed for the life of the processes:
elasticity on this backend means saving state, stopping the group and relaunching it with the new
size (:mod:`gluon_elastic.launch`). The servers sum the workers' pushes.
"""
import pickle

import numpy as np

from .base import Backend

__all__ = ["KVStoreBackend", "DIST_KVSTORES"]

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
# Keys of sum_over_workers (plus the vector length): below broadcast_arrays' keys, far above
# the trainer's parameter indices.
_SUM_KEY_BASE = 1 << 29


class KVStoreBackend(Backend):
    """Workers of an MXNet parameter-server group.

    Parameters
    ----------
    kvstore : str or mxnet.kvstore.KVStore
        ``'dist_sync'`` or ``'dist_device_sync'``, or a store already created. Asynchronous stores
        are refused: their updates run on the servers, where the LR cannot follow the world.
    """

    grad_reduction = "sum"

    def __init__(self, kvstore="dist_sync"):
        import mxnet as mx

        if isinstance(kvstore, str):
            if kvstore not in DIST_KVSTORES:
                raise ValueError("KVStoreBackend kvstore must be one of %s, got %r"
                                 % (", ".join(DIST_KVSTORES), kvstore))
            kvstore = mx.kv.create(kvstore)
        if "async" in kvstore.type:
            raise ValueError("asynchronous KVStore %r is not supported: updates on the servers "
                             "cannot follow a changing world" % kvstore.type)
        self.kvstore = kvstore
        self.name = kvstore.type
        # Keys for broadcast_arrays live far above the trainer's parameter indices.
        self._next_key = 1 << 30
        self._sum_keys = set()

    @property
    def rank(self):
        return self.kvstore.rank

    @property
    def world_size(self):
        return self.kvstore.num_workers

    def barrier(self):
        self.kvstore._barrier()  # pylint: disable=protected-access

    def sum_over_workers(self, values):
        import mxnet as mx

        # One key per vector length, created on first use and reused: the servers keep one
        # small array per length, however many steps run.
        values = np.asarray(values, dtype=np.float64)
        key = _SUM_KEY_BASE + values.size
        array = mx.nd.array(values, dtype=np.float64)
        if key not in self._sum_keys:
            self.kvstore.init(key, mx.nd.zeros_like(array))
            self._sum_keys.add(key)
        self.kvstore.pushpull(key, array, out=array)
        return array.asnumpy()

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        if root_rank != 0:
            raise ValueError("the KVStore broadcasts from rank 0 only, got root_rank=%r" % root_rank)
        for array in arrays:
            key = self._next_key
            self._next_key += 1
            self.kvstore.broadcast(key, array, array)

    def broadcast_object(self, obj, root_rank=0, name="object"):
        return self.allgather_object(obj if self.rank == root_rank else None)[root_rank]

    def allgather_object(self, obj, name="gather"):
        # Each rank writes its pickled object into its own slot of a zero buffer; the sum over
        # workers is then the concatenation. Lengths are gathered first the same way.
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        lengths = self._sum_slots(np.array([payload.size], dtype=np.float64), 1)
        width = int(lengths.max())
        padded = np.zeros(width, dtype=np.float64)
        padded[:payload.size] = payload
        gathered = self._sum_slots(padded, width)
        return [pickle.loads(gathered[r, :int(lengths[r, 0])].astype(np.uint8).tobytes())
                for r in range(self.world_size)]

    def _sum_slots(self, values, width):
        import mxnet as mx

        buf = np.zeros((self.world_size, width), dtype=np.float64)
        buf[self.rank] = values
        array = mx.nd.array(buf, dtype=np.float64)
        key = self._next_key
        self._next_key += 1
        self.kvstore.init(key, mx.nd.zeros_like(array))
        self.kvstore.pushpull(key, array, out=array)
        return array.asnumpy()
