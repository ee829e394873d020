"""Arrays from one worker to a few others over direct TCP streams: a joiner's state transfer.

A worker that joins an elastic Horovod job needs the whole training state (ResNet-50 v1b with
momentum: 205 MB); the survivors already hold it. Horovod 0.28.1's broadcast op is unsafe under
MXNet (see :mod:`gluon_elastic.backends.horovod`), and the all-reduce sums that replace it move
every byte through every rank and add it up: 2.1 s for 205 MB on a 2-core machine whose loopback
carries one stream at about 1 GB/s. Here the root sends each byte once to each receiver, and
the receiver writes them into its own arrays.

No copy of the state is made on either side for arrays in host memory: the bytes go from the
root's arrays to the socket and from the socket into the receiver's arrays
(:func:`host_memory`). Arrays on a GPU are staged in :class:`HostBuffers`, allocated and faulted
in ahead of the transfer (page faults alone cost about as much as the copy): the root queues
their copies to the host on MXNet's engine and sends each as soon as it has landed; the
receiver queues the copy of each to its device as soon as it has arrived.

Protocol, per receiver: the receiver connects to the root's endpoint (address, port, token, all
sent beforehand through a Horovod collective) and sends its rank, the token and a digest of the
layout it expects (shapes and dtypes); the root answers one status byte (1: layout equal) and
then streams every array's bytes in order. The bytes are the arrays' own, so the receiver ends
with root's values bit for bit.

Failures are Horovod failures: a peer that dies or stalls past ``timeout`` seconds (the Gloo
timeout, so a slow peer is not taken for a dead one any sooner than by Gloo) raises
:class:`horovod.common.exceptions.HorovodInternalError`, and the elastic loop resets as after a
failed collective.
"""
import ctypes
import hashlib
import queue
import secrets
import socket
import struct
import threading

import numpy as np

__all__ = ["HostBuffers", "StateSender", "receive_arrays", "layout_digest", "host_memory"]

_MAGIC = b"GEST"
_HELLO = struct.Struct("!4sI16s32s")   # magic, receiver's rank, token, layout digest
_CHUNK = 4 << 20                        # bytes per send/receive call


def _transfer_error(text):
    from horovod.common.exceptions import HorovodInternalError  # pylint: disable=import-outside-toplevel

    return HorovodInternalError(text)


def layout_digest(arrays):
    """SHA-256 of the shapes and dtypes of ``arrays`` (NDArrays), in order."""
    text = ";".join("%s:%s" % (tuple(a.shape), np.dtype(a.dtype).str) for a in arrays)
    return hashlib.sha256(text.encode()).digest()


def _byte_view(array):
    """A flat uint8 view of a C-contiguous numpy array."""
    return memoryview(array).cast("B")


def host_memory(array):
    """The bytes of a host NDArray, shared with it (no copy), or None for an array elsewhere.

    MXNet's ``MXNDArrayGetData`` first puts an array that MKLDNN re-laid out back into the
    default layout, in place, so the bytes are the array's values in C order. No engine
    operation may be pending on the array while the view is used.
    """
    from mxnet.base import _LIB, check_call  # pylint: disable=import-outside-toplevel

    if array.context.device_type != "cpu" or array.stype != "default":
        return None
    array.wait_to_read()
    pointer = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    num_bytes = array.size * np.dtype(array.dtype).itemsize
    return memoryview((ctypes.c_char * num_bytes).from_address(pointer.value)).cast("B")


def _recv_exactly(sock, view):
    while len(view):
        received = sock.recv_into(view, min(len(view), _CHUNK))
        if received == 0:
            raise ConnectionError("connection closed by the sender")
        view = view[received:]


class HostBuffers:
    """Host memory for the arrays of a layout that are not in host memory themselves (GPU).

    Parameters
    ----------
    arrays : list of mxnet.nd.NDArray
        Gives the layout (shapes, dtypes, devices); the memory is written once here so that no
        page fault is left for the transfer. ``host[i]`` and ``views[i]`` are None for an
        array in host memory (it is sent and received in place).
    stage_host_arrays : bool
        Stage every array, host arrays included (what a GPU's arrays go through, on a machine
        without one).
    """

    def __init__(self, arrays, stage_host_arrays=False):
        import mxnet as mx  # pylint: disable=import-outside-toplevel

        self.digest = layout_digest(arrays)
        self.host = [None if a.context.device_type == "cpu" and not stage_host_arrays else
                     np.zeros(tuple(a.shape), dtype=a.dtype) for a in arrays]
        # from_numpy marks the array it is given read-only: it gets a view, the receiver writes
        # into ``host``.
        self.views = [None if h is None else mx.nd.from_numpy(h.view(), zero_copy=True)
                      for h in self.host]


class StateSender:
    """The root's side: listens on ``address``; :meth:`serve` streams ``arrays`` to receivers.

    Parameters
    ----------
    address : str
        Local IP address the receivers can reach (the one Horovod's Gloo connections use).
    arrays : list of mxnet.nd.NDArray
        What every receiver gets, in order. They must not change until :meth:`serve` returns.
    buffers : HostBuffers
        Of the arrays' layout; the copies of device arrays into it are queued at once.
    timeout : float
        Seconds a receiver may take to connect, and any send may stall.

    Attributes
    ----------
    endpoint : tuple
        ``(address, port, token)``, for the receivers.
    """

    def __init__(self, address, arrays, buffers, timeout):
        if buffers.digest != layout_digest(arrays):
            raise ValueError("the host buffers have another layout than the arrays")
        self.sources = []   # per array: its own memory, or (staging array, staging NDArray)
        for array, host, view in zip(arrays, buffers.host, buffers.views):
            if host is None:
                self.sources.append(host_memory(array))
            else:
                array.copyto(view)
                self.sources.append((host, view))
        self.digest = buffers.digest
        self.timeout = timeout
        self._arrays = arrays   # the memory views above point into them
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((address, 0))
        self._listener.listen(64)
        self._listener.settimeout(timeout)
        self.endpoint = (address, self._listener.getsockname()[1], secrets.token_bytes(16))

    def serve(self, receivers):
        """Stream the arrays to each rank of ``receivers`` (concurrently); returns when all have them.

        Raises
        ------
        horovod.common.exceptions.HorovodInternalError
            A receiver did not connect in time, or its stream broke.
        RuntimeError
            A receiver expects another layout of the arrays.
        """
        expected = set(receivers)
        failures = queue.Queue()
        threads = []
        try:
            while expected:
                try:
                    conn, _ = self._listener.accept()
                except OSError as err:
                    raise _transfer_error("state transfer: ranks %s did not connect within %g s (%s)"
                                          % (sorted(expected), self.timeout, err)) from err
                conn.settimeout(self.timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    hello = bytearray(_HELLO.size)
                    _recv_exactly(conn, memoryview(hello))
                    magic, rank, token, digest = _HELLO.unpack(bytes(hello))
                except OSError:
                    conn.close()  # not a receiver of this transfer
                    continue
                if magic != _MAGIC or token != self.endpoint[2] or rank not in expected:
                    conn.close()
                    continue
                expected.discard(rank)
                if digest != self.digest:
                    conn.sendall(b"\0")
                    conn.close()
                    raise RuntimeError("state transfer: rank %d expects another layout of the "
                                       "state than rank 0 holds (a different model or optimizer)"
                                       % rank)
                thread = threading.Thread(target=self._send, args=(conn, rank, failures),
                                          daemon=True, name="gluon_elastic-state-send-%d" % rank)
                thread.start()
                threads.append(thread)
        finally:
            for thread in threads:
                thread.join()
            self.close()
        if not failures.empty():
            rank, err = failures.get()
            raise _transfer_error("state transfer to rank %d failed: %s" % (rank, err)) from err

    def _send(self, conn, rank, failures):
        try:
            with conn:
                conn.sendall(b"\1")
                for source in self.sources:
                    if isinstance(source, tuple):
                        host, view = source
                        view.wait_to_read()   # its copy from the device has landed
                        source = _byte_view(host)
                    conn.sendall(source)
        except Exception as err:  # pylint: disable=broad-except
            failures.put((rank, err))

    def close(self):
        """Stop listening; wait for the queued copies (the buffers may be reused after)."""
        self._listener.close()
        for source in self.sources:
            if isinstance(source, tuple):
                source[1].wait_to_read()


def receive_arrays(endpoint, arrays, buffers, rank, timeout):
    """The receiver's side: overwrite ``arrays`` (NDArrays) with the root's, bit for bit.

    Parameters
    ----------
    endpoint : tuple
        The sender's ``(address, port, token)``.
    arrays : list of mxnet.nd.NDArray
        Same shapes and dtypes as the sender's, in the same order.
    buffers : HostBuffers
        Of the arrays' layout; the arrays arrive there first.
    rank : int
        This worker's rank (the sender checks it is a receiver).
    timeout : float
        Seconds any connect or receive may stall.

    Raises
    ------
    horovod.common.exceptions.HorovodInternalError
        The sender could not be reached or its stream broke.
    RuntimeError
        The sender holds another layout of the state.
    """
    import mxnet as mx  # pylint: disable=import-outside-toplevel

    if buffers.digest != layout_digest(arrays):
        raise ValueError("the host buffers have another layout than the arrays")
    mx.nd.waitall()   # nothing may read or write the arrays behind the engine's back
    address, port, token = endpoint
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(_HELLO.pack(_MAGIC, rank, token, buffers.digest))
            status = conn.recv(1)
            if status == b"\0":
                raise RuntimeError("state transfer: rank 0 holds another layout of the state "
                                   "than this worker (a different model or optimizer)")
            if status != b"\1":
                raise ConnectionError("the sender closed the connection")
            for host, view, array in zip(buffers.host, buffers.views, arrays):
                if host is None:
                    _recv_exactly(conn, host_memory(array))
                    continue
                _recv_exactly(conn, _byte_view(host))
                # Queued on MXNet's engine, it runs while the next array arrives.
                view.copyto(array)
    except OSError as err:
        raise _transfer_error("state transfer from %s:%d failed: %s" % (address, port, err)) from err
    finally:
        for array in arrays:   # the copies out of the buffers are done: they can be reused
            array.wait_to_read()
