"""Horovod backend (Gloo or MPI controller) for MXNet/Gluon.

Gradients are all-reduced with ``op=Sum`` and the trainer divides by the global batch, which is
read again at every step: unlike ``horovod.mxnet.DistributedTrainer``, no ``1/size`` is baked in at
construction, so the normalisation stays right after the world changes in place.

Broadcasts are all-reduce sums in which every rank but the root contributes zeros. Horovod
0.28.1's own broadcast op is unsafe under MXNet: after queueing the op, ``EnqueueTensorBroadcast``
logs the tensor's name, a string owned by the MXNet engine op, which the engine frees as soon as
Horovod's background thread has completed the broadcast. When the engine thread is descheduled
between the two (a loaded machine), the log line reads freed memory: the worker segfaults, or
copies a garbage-sized string until it holds tens of GB. The all-reduce path builds its log line
before queueing and is not affected; ``x + 0`` is exact, so the result is root's value bit for
bit (a negative zero becomes a positive one, on every rank alike).

Failure propagation: when a worker dies, only the survivors that were exchanging data with it see
the error at once ("Connection reset by peer"); a survivor blocked in a receive from another
survivor waits for ``HOROVOD_GLOO_TIMEOUT_SECONDS``. :meth:`HorovodBackend.break_connections`
shuts down (``shutdown(SHUT_RDWR)``) the TCP connections that Horovod's Gloo contexts opened in
:meth:`HorovodBackend.init`, so every peer of a survivor that saw the failure sees one too: the
error spreads through the mesh in a fraction of a second, with no short Gloo timeout that would
also remove workers that are only slow.

A worker that crashes must die at once: MXNet 1.9.1's SIGSEGV handler prints a stack trace and
calls ``exit()``, and a worker that crashed inside Horovod's failure handling (seen with
ResNet-50 on a loaded machine) hangs there with its connections open, so its peers wait for the
Gloo timeout. Under an elastic driver the backend puts back the default SIGSEGV action, after
Python's ``faulthandler`` has printed the threads' stacks: the kernel then closes the dead
worker's connections and the survivors reset at once.
"""
import faulthandler
import os
import pickle
import signal
import socket

from .base import Backend

__all__ = ["HorovodBackend", "socket_inodes"]


def socket_inodes():
    """``{fd: inode}`` of the sockets this process has open (from ``/proc/self/fd``)."""
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + entry)
        except OSError:  # closed since listdir (the listing's own fd among them)
            continue
        if target.startswith("socket:["):
            found[int(entry)] = target
    return found


def _die_on_segfault():
    """Replace MXNet's SIGSEGV handler (it can hang) by a stack dump and the default action."""
    try:
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    except ValueError:  # not the main thread: leave the handlers as they are
        return
    if not faulthandler.is_enabled():
        # Dumps every thread's Python stack, then restores SIG_DFL and re-raises: the process dies.
        faulthandler.enable(all_threads=True)


class HorovodBackend(Backend):
    """Workers of a Horovod job; in-place elastic under ``horovodrun --min-np/--max-np``.

    Calls ``hvd.init()`` unless Horovod is already initialised.

    ``elastic_driver`` is True under ``horovodrun --host-discovery-script``
    (``HOROVOD_ELASTIC=1``): a joining worker's state comes from ``ElasticState.sync()``.
    ``gloo_sockets`` maps the file descriptors of the connections the last :meth:`init` opened
    to their socket inodes (what :meth:`break_connections` shuts down).
    """

    name = "horovod"
    grad_reduction = "sum"
    kvstore = None

    def __init__(self):
        import horovod.mxnet as hvd

        self._hvd = hvd
        self.elastic_driver = os.environ.get("HOROVOD_ELASTIC") == "1"
        self.gloo_sockets = {}
        if self.elastic_driver:
            _die_on_segfault()
        if not hvd.is_initialized():
            if self.elastic_driver:
                # A worker started ahead of a growth reports its start-up done here and waits
                # until the survivors have formed the new world (its hvd.init() joins that world).
                from ..run import join_when_let_in  # pylint: disable=import-outside-toplevel

                join_when_let_in()
            self.init()

    def init(self):
        """``hvd.init()``, remembering the TCP connections it opened (Gloo's full mesh).

        The Gloo contexts connect every pair of workers before ``hvd.init()`` returns, so the
        sockets that appear during the call and are connected afterwards are exactly Gloo's (the
        rendezvous HTTP requests are closed by then; listening sockets are left alone).
        """
        import psutil

        before = socket_inodes()
        self._hvd.init()
        opened = {fd: inode for fd, inode in socket_inodes().items()
                  if before.get(fd) != inode}
        connected = {conn.fd for conn in psutil.Process().net_connections(kind="tcp")
                     if conn.status == psutil.CONN_ESTABLISHED}
        self.gloo_sockets = {fd: inode for fd, inode in opened.items() if fd in connected}

    def break_connections(self):
        """Shut down the Gloo connections of the last :meth:`init`; returns how many.

        Called by a worker that saw a collective fail: each of its peers then fails its own
        pending receive or send at once, and does the same in turn. A descriptor that no longer
        holds the socket it held at init (closed and reused since) is left alone. Shutting a
        duplicate down acts on the shared socket, and the descriptor stays Gloo's to close.
        """
        broken = 0
        for fd, inode in self.gloo_sockets.items():
            try:
                if os.readlink("/proc/self/fd/%d" % fd) != inode:
                    continue
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
                broken += 1
            except OSError:  # already disconnected
                pass
            finally:
                sock.close()
        self.gloo_sockets = {}
        return broken

    @property
    def rank(self):
        return self._hvd.rank()

    @property
    def world_size(self):
        return self._hvd.size()

    @property
    def local_rank(self):
        return self._hvd.local_rank()

    def _allreduce_sum(self, array, index):
        if self._hvd.size() == 1:
            return
        # Priority follows the reverse order of backward, as in horovod.mxnet.
        self._hvd.allreduce_(array, average=False, name="grad.%d" % index, priority=-index)

    def _broadcast_inplace(self, array, root_rank, name):
        """Overwrite ``array`` with root's value: an all-reduce sum with zeros off the root."""
        if self._hvd.rank() != root_rank:
            array[:] = 0
        self._hvd.allreduce_(array, average=False, name=name)

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        for index, array in enumerate(arrays):
            self._broadcast_inplace(array, root_rank, "%s.%d" % (name, index))

    def broadcast_object(self, obj, root_rank=0, name="object"):
        import mxnet as mx
        import numpy as np

        is_root = self._hvd.rank() == root_rank
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if is_root else b""
        size = mx.nd.array([len(payload)], dtype="int64")
        self._broadcast_inplace(size, root_rank, name + ".size")
        num_bytes = int(size.asscalar())
        if is_root:
            data = mx.nd.array(np.frombuffer(payload, dtype=np.uint8), dtype="uint8")
        else:
            data = mx.nd.zeros((num_bytes,), dtype="uint8")
        self._broadcast_inplace(data, root_rank, name + ".data")
        received = data.asnumpy().tobytes()
        return obj if is_root else pickle.loads(received)

    def allgather_object(self, obj, name="gather"):
        return self._hvd.allgather_object(obj, name=name)

    def sum_over_workers(self, values):
        import mxnet as mx
        import numpy as np

        array = mx.nd.array(np.asarray(values, dtype=np.float64), dtype=np.float64)
        self._hvd.allreduce_(array, average=False, name="sum_over_workers.%d" % array.size)
        return array.asnumpy()

    def barrier(self):
        import mxnet as mx

        mx.nd.waitall()
        self._hvd.allreduce(mx.nd.zeros(1), name="barrier")
        mx.nd.waitall()
