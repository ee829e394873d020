"""Single-process backend: one worker, or several emulated workers in one process."""
from .base import Backend

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """One process, one or several devices.

    Parameters
    ----------
    kvstore : {'device', 'local'}, mxnet.kvstore.KVStore or None
        MXNet store that sums gradients over the devices of this process (``'device'`` reduces on
        the devices, ``'local'`` on the CPU), or a non-distributed store already created, which
        Gluon then uses as it is (even on one device). None for a single device.
    world_size : int
        Number of workers this process stands for. Above 1 the process emulates a group: the
        caller runs forward/backward for every emulated worker (each on its own per-worker batch,
        with ``grad_req='add'``) so the gradients add up to the sum over the global batch, exactly
        what a real group's reduction gives. :meth:`set_world_size` changes it between steps.
    """

    name = "local"
    grad_reduction = "sum"

    def __init__(self, kvstore="device", world_size=1):
        if hasattr(kvstore, "type") and hasattr(kvstore, "num_workers"):
            if "dist" in kvstore.type:
                raise ValueError("LocalBackend takes a store of one process, got %r: use "
                                 "KVStoreBackend" % kvstore.type)
            self.name = kvstore.type
        elif kvstore in ("device", "local", None):
            self.name = kvstore or "local"
        else:
            raise ValueError("LocalBackend kvstore must be 'device', 'local', a KVStore or None, "
                             "got %r" % (kvstore,))
        self.kvstore = kvstore
        self._world_size = 1
        self.set_world_size(world_size)

    @property
    def world_size(self):
        return self._world_size

    def broadcast_parameters(self, params, root_rank=0):
        """Nothing to do: every emulated worker shares this process's parameters."""

    def set_world_size(self, world_size):
        """Change the number of emulated workers (takes effect at the next step)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError("world_size must be a positive integer, got %r" % (world_size,))
        self._world_size = world_size
