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

A joiner's state does not take the all-reduce path: :meth:`HorovodBackend.send_arrays` streams
it from rank 0 over direct TCP connections (:mod:`gluon_elastic.backends.stream`), each byte
sent once per receiver, at the speed of the link. The survivors, which hold the state already,
take no part beyond a small broadcast (the root's endpoint). Beyond
``STREAM_MAX_RECEIVERS`` receivers the root's uplink would carry more than a ring all-reduce puts
through every rank (about twice the state), and the all-reduce path is taken again.

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
import time

from .base import Backend

__all__ = ["HorovodBackend", "socket_inodes", "STREAM_MAX_RECEIVERS"]

# Receivers up to which send_arrays streams from the root rather than all-reducing (see above).
STREAM_MAX_RECEIVERS = 2


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

    Calls ``hvd.init()`` unless Horovod is already initialised; under an elastic driver
    (``elastic_driver``, True under ``horovodrun --host-discovery-script``: ``HOROVOD_ELASTIC=1``)
    the worker joins its world later, in :meth:`join`, which :func:`gluon_elastic.run.run` calls
    before the first sync (any collective before it joins too). Everything the worker builds in
    between (trainer, ElasticState, data) is then part of its start-up, which a worker started
    ahead of a growth completes while the others keep training. Until it has joined, ``rank``,
    ``world_size`` and ``local_rank`` are those of the slot the driver started it in
    (``HOROVOD_RANK``...); a joiner's state comes from ``ElasticState.sync()``.
    ``gloo_sockets`` maps the file descriptors of the connections the last :meth:`init` opened
    to their socket inodes (what :meth:`break_connections` shuts down); ``address`` is their local
    IP address (None in a world of one), where :meth:`send_arrays` listens for receivers.
    """

    name = "horovod"
    grad_reduction = "sum"
    kvstore = None

    def __init__(self):
        import horovod.mxnet as hvd

        self._hvd = hvd
        self.elastic_driver = os.environ.get("HOROVOD_ELASTIC") == "1"
        self.gloo_sockets = {}
        self.address = None
        self._send_buffers = None
        self.join_times = None
        self._joined = hvd.is_initialized()
        if self.elastic_driver:
            _die_on_segfault()
        elif not self._joined:
            self.join()

    def join(self):
        """Join the job's world if not done yet (``hvd.init()``).

        A worker that the elastic driver started ahead of a growth first reports its start-up
        done and waits until the survivors have formed the new world, which its ``hvd.init()``
        then joins. ``join_times`` keeps ``(start, let in, joined)`` (``time.time()``).
        """
        if self._joined:
            return
        start = time.time()
        if self.elastic_driver:
            from ..run import join_when_let_in  # pylint: disable=import-outside-toplevel

            join_when_let_in()
        let_in = time.time()
        self.init()
        self.join_times = (start, let_in, time.time())

    def init(self):
        """``hvd.init()``, remembering the TCP connections it opened (Gloo's full mesh).

        The Gloo contexts connect every pair of workers before ``hvd.init()`` returns, so the
        sockets that appear during the call and are connected afterwards are exactly Gloo's (the
        rendezvous HTTP requests are closed by then; listening sockets are left alone).
        """
        import psutil

        before = socket_inodes()
        self._hvd.init()
        self._joined = True
        opened = {fd: inode for fd, inode in socket_inodes().items()
                  if before.get(fd) != inode}
        connected = {conn.fd: conn.laddr.ip
                     for conn in psutil.Process().net_connections(kind="tcp")
                     if conn.status == psutil.CONN_ESTABLISHED}
        self.gloo_sockets = {fd: inode for fd, inode in opened.items() if fd in connected}
        # The address the peers reach this worker at: Gloo's connections come from it.
        self.address = next((connected[fd] for fd in sorted(self.gloo_sockets)), None)

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
        return self._hvd.rank() if self._joined else int(os.environ.get("HOROVOD_RANK", "0"))

    @property
    def world_size(self):
        return self._hvd.size() if self._joined else int(os.environ.get("HOROVOD_SIZE", "1"))

    @property
    def local_rank(self):
        return self._hvd.local_rank() if self._joined else \
            int(os.environ.get("HOROVOD_LOCAL_RANK", "0"))

    def allreduce_grads(self, params):
        self.join()
        super().allreduce_grads(params)

    def _allreduce_sum(self, array, index):
        if self._hvd.size() == 1:
            return
        # Priority follows the reverse order of backward, as in horovod.mxnet.
        self._hvd.allreduce_(array, average=False, name="grad.%d" % index, priority=-index)

    def _broadcast_inplace(self, array, root_rank, name):
        """Overwrite ``array`` with root's value: an all-reduce sum with zeros off the root."""
        self.join()
        if self._hvd.rank() != root_rank:
            array[:] = 0
        self._hvd.allreduce_(array, average=False, name=name)

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        for index, array in enumerate(arrays):
            self._broadcast_inplace(array, root_rank, "%s.%d" % (name, index))

    def send_arrays(self, arrays, receivers, root_rank=0, name="arrays"):
        """Root's ``arrays`` to the ranks in ``receivers`` only, streamed over TCP.

        Every rank calls it with the same ``receivers``. The root listens on its Gloo address,
        the endpoint travels in a small broadcast, and each receiver pulls the arrays from
        the root (:mod:`gluon_elastic.backends.stream`); the other ranks return at once. More
        than ``STREAM_MAX_RECEIVERS`` receivers (or no address to listen on) take the all-reduce
        path to every rank instead.
        """
        from . import stream  # pylint: disable=import-outside-toplevel

        self.join()
        receivers = sorted(set(receivers) - {root_rank})
        if not receivers:
            return
        if len(receivers) > STREAM_MAX_RECEIVERS:
            super().send_arrays(arrays, receivers, root_rank=root_rank, name=name)
            return
        timeout = float(os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", "30"))
        sender = None
        if self.rank == root_rank and self.address is not None:
            sender = stream.StateSender(self.address, arrays, self._buffers_for(arrays), timeout)
        try:
            endpoint = self.broadcast_object(sender.endpoint if sender is not None else None,
                                             root_rank=root_rank, name=name + ".endpoint")
        except BaseException:
            if sender is not None:
                sender.close()
            raise
        if endpoint is None:  # the root has no address to listen on
            super().send_arrays(arrays, receivers, root_rank=root_rank, name=name)
        elif sender is not None:
            sender.serve(receivers)
        elif self.rank in receivers:
            stream.receive_arrays(endpoint, arrays, self._buffers_for(arrays), self.rank, timeout)

    def reserve_send_buffers(self, arrays):
        """Allocate and fault in the host buffers :meth:`send_arrays` stages ``arrays`` in.

        One set is kept (the state's size in host memory), for the last layout asked for.
        """
        self._buffers_for(arrays)

    def _buffers_for(self, arrays):
        from . import stream  # pylint: disable=import-outside-toplevel

        if self._send_buffers is None or \
                self._send_buffers.digest != stream.layout_digest(arrays):
            self._send_buffers = None   # freed before the next is allocated
            self._send_buffers = stream.HostBuffers(arrays)
        return self._send_buffers

    def broadcast_object(self, obj, root_rank=0, name="object"):
        import mxnet as mx
        import numpy as np

        self.join()
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
        self.join()
        return self._hvd.allgather_object(obj, name=name)

    def sum_over_workers(self, values):
        import mxnet as mx
        import numpy as np

        self.join()
        array = mx.nd.array(np.asarray(values, dtype=np.float64), dtype=np.float64)
        self._hvd.allreduce_(array, average=False, name="sum_over_workers.%d" % array.size)
        return array.asnumpy()

    def barrier(self):
        import mxnet as mx

        self.join()
        mx.nd.waitall()
        self._hvd.allreduce(mx.nd.zeros(1), name="barrier")
        mx.nd.waitall()
