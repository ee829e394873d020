"""Training backends: who the workers are and how tensors move between them.

:func:`create` maps the names used on the command line to backends. Scripts ask the backend for
``rank`` and ``world_size`` and never branch on its name.
"""
from .base import Backend
from .kvstore import DIST_KVSTORES, KVStoreBackend
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "KVStoreBackend", "HorovodBackend", "create", "BACKEND_NAMES"]

BACKEND_NAMES = ("local", "device") + DIST_KVSTORES + ("horovod",)


def create(name="device", world_size=1):
    """Create the backend called ``name``.

    Parameters
    ----------
    name : str or mxnet.kvstore.KVStore or Backend or None
        ``'local'``/``'device'`` (one process), ``'dist_sync'``/``'dist_device_sync'`` (KVStore
        group), ``'horovod'``; a KVStore object is wrapped and used as it is (with its settings,
        such as gradient compression), a Backend is returned as it is, None
        means one process on one device.
    world_size : int
        Emulated workers for the single-process backends.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        return LocalBackend(None, world_size=world_size)
    if isinstance(name, str):
        if name in ("local", "device"):
            return LocalBackend(name, world_size=world_size)
        if name in DIST_KVSTORES:
            return KVStoreBackend(name)
        if name == "horovod":
            from .horovod import HorovodBackend as _HorovodBackend
            return _HorovodBackend()
        raise ValueError("unknown backend %r; choose one of %s" % (name, ", ".join(BACKEND_NAMES)))
    if hasattr(name, "type") and hasattr(name, "num_workers"):
        if "dist" in name.type:
            return KVStoreBackend(name)
        # A store made by the caller is used as it is (its gradient compression included).
        return LocalBackend(name, world_size=world_size)
    raise ValueError("backend must be a name, an mxnet KVStore or a Backend, got %r" % (name,))


def __getattr__(attr):
    # Horovod is optional: import it only when asked for.
    if attr == "HorovodBackend":
        from .horovod import HorovodBackend
        return HorovodBackend
    raise AttributeError(attr)

