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
# Keys of the backend's own collectives start here, far above the trainer's parameter indices.
_KEY_BASE = 1 << 29


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
        # (what a key carries, shape, dtype) -> key. Each key is created once and reused, so the
        # servers hold one array per entry however many collectives run.
        self._keys = {}

    @property
    def rank(self):
        return self.kvstore.rank

    @property
    def world_size(self):
        return self.kvstore.num_workers

    @property
    def local_rank(self):
        """Index among this host's workers, from the launcher (0 when started by hand)."""
        import os

        from ..restart import ENV
        return int(os.environ.get(ENV["local_rank"], "0"))

    def barrier(self):
        self.kvstore._barrier()  # pylint: disable=protected-access

    def _sum_inplace(self, slot, array, contribution=None):
        """``array <- sum over workers of contribution`` (default ``array``), through a reused key.

        Every rank calls with the same ``slot`` and the same shape and dtype.
        """
        import mxnet as mx

        entry = (slot, tuple(array.shape), str(array.dtype))
        key = self._keys.get(entry)
        if key is None:
            key = self._keys[entry] = _KEY_BASE + len(self._keys)
            self.kvstore.init(key, mx.nd.zeros(array.shape, dtype=array.dtype))
        self.kvstore.pushpull(key, array if contribution is None else contribution, out=array)

    def sum_over_workers(self, values):
        import mxnet as mx

        array = mx.nd.array(np.asarray(values, dtype=np.float64), dtype=np.float64)
        self._sum_inplace("sum", array)
        return array.asnumpy()

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        import mxnet as mx

        # A sum in which every rank but the root contributes zeros: x + 0 is exact.
        for index, array in enumerate(arrays):
            contribution = array if self.rank == root_rank else mx.nd.zeros_like(array)
            self._sum_inplace((name, index), array, contribution)

    def broadcast_object(self, obj, root_rank=0, name="object"):
        return self.allgather_object(obj if self.rank == root_rank else None)[root_rank]

    def allgather_object(self, obj, name="gather"):
        import mxnet as mx

        # Each rank writes its pickled object into its own row of a zero buffer; the sum over
        # workers is then every rank's bytes. Lengths are gathered first the same way. Rows are
        # padded to a power of two (at least 256 bytes), so a few keys serve every call; float32
        # holds a byte exactly.
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        lengths = np.zeros((self.world_size, 1), dtype=np.float64)
        lengths[self.rank, 0] = payload.size
        lengths = mx.nd.array(lengths, dtype=np.float64)
        self._sum_inplace("gather.lengths", lengths)
        lengths = lengths.asnumpy()[:, 0].astype(np.int64)
        width = 1 << max(8, int(lengths.max() - 1).bit_length())
        rows = np.zeros((self.world_size, width), dtype=np.float32)
        rows[self.rank, :payload.size] = payload
        rows = mx.nd.array(rows, dtype=np.float32)
        self._sum_inplace("gather.bytes", rows)
        rows = rows.asnumpy()
        return [pickle.loads(rows[r, :lengths[r]].astype(np.uint8).tobytes())
                for r in range(self.world_size)]
