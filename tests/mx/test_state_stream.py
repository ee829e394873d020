"""The state stream (gluon_elastic.backends.stream) between threads of one process, over loopback."""
import socket
import threading

import mxnet as mx
import numpy as np
import pytest
from horovod.common.exceptions import HorovodInternalError

from gluon_elastic.backends import stream


def root_arrays():
    """Arrays whose bits a float sum would not keep (-0.0, a NaN payload), and other dtypes."""
    rng = np.random.RandomState(3)
    special = np.array([-0.0, np.nan, 1e-45, -np.inf, 3.0], dtype=np.float32)
    special.view(np.uint32)[1] = 0x7fc0beef   # a NaN with a payload
    return [mx.nd.array(rng.randn(257, 33), dtype="float32"),
            mx.nd.array(special, dtype="float32"),
            mx.nd.array(rng.randn(7), dtype="float16"),
            mx.nd.array(rng.randint(-2 ** 40, 2 ** 40, size=(3, 4)), dtype="int64"),
            mx.nd.array([7], dtype="uint8"),
            mx.nd.array(rng.randn(3 << 20), dtype="float32")]   # 12 MB: several chunks


def empty_like(arrays):
    return [mx.nd.zeros(a.shape, dtype=a.dtype) for a in arrays]


def serve_in_thread(sender, receivers):
    failures = []

    def serve():
        try:
            sender.serve(receivers)
        except Exception as err:  # pylint: disable=broad-except
            failures.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread, failures


def mkldnn_conv():
    """A convolution whose weight forward passes left in MKLDNN's own layout."""
    net = mx.gluon.nn.Conv2D(64, 1, in_channels=64)
    net.initialize()
    weight = net.weight.data()
    for _ in range(10):   # a pass after the first reorders the weight, on the engine
        net(mx.nd.ones((1, 64, 8, 8)))
        mx.nd.waitall()
        try:
            weight[:] = weight.asnumpy()
        except mx.base.MXNetError:
            return net, [weight, net.bias.data()]   # MKLDNN's layout: a copy from numpy is refused
    pytest.fail("MXNet kept the default layout: the test needs MKLDNN's")


def bits(array):
    return array.asnumpy().tobytes()


@pytest.mark.parametrize("staged", [False, True], ids=["in-place", "staged"])
def test_two_receivers_get_the_roots_arrays_bit_for_bit(staged):
    """In place (host arrays) and through host buffers (the path of GPU arrays)."""
    sent = root_arrays()
    sender = stream.StateSender("127.0.0.1", sent, stream.HostBuffers(sent, staged), timeout=20)
    thread, failures = serve_in_thread(sender, [1, 2])
    targets = {rank: empty_like(sent) for rank in (1, 2)}
    receivers = [threading.Thread(target=stream.receive_arrays,
                                  args=(sender.endpoint, targets[rank],
                                        stream.HostBuffers(sent, staged), rank, 20))
                 for rank in (1, 2)]
    for receiver in receivers:
        receiver.start()
    for receiver in receivers + [thread]:
        receiver.join(60)
    assert failures == []
    for rank in (1, 2):
        assert [bits(a) for a in targets[rank]] == [bits(a) for a in sent]
    assert np.signbit(targets[1][1].asnumpy()[0])


def test_a_receiver_writes_into_parameters_that_mkldnn_re_laid_out():
    net, targets = mkldnn_conv()
    sent = [mx.nd.array(np.random.RandomState(1).randn(*a.shape), dtype=a.dtype) for a in targets]
    sender = stream.StateSender("127.0.0.1", sent, stream.HostBuffers(sent), timeout=20)
    thread, failures = serve_in_thread(sender, [1])
    stream.receive_arrays(sender.endpoint, targets, stream.HostBuffers(targets), 1, 20)
    thread.join(60)
    assert failures == []
    assert [bits(a) for a in targets] == [bits(a) for a in sent]
    data = mx.nd.ones((1, 64, 8, 8))
    assert bits(net(data)) == bits(mx.nd.Convolution(data, sent[0], sent[1], kernel=(1, 1),
                                                     num_filter=64))


def test_the_root_sends_parameters_that_mkldnn_re_laid_out_in_their_values_order():
    net, sent = mkldnn_conv()
    values = [a.asnumpy() for a in sent]
    sender = stream.StateSender("127.0.0.1", sent, stream.HostBuffers(sent), timeout=20)
    thread, failures = serve_in_thread(sender, [1])
    targets = empty_like(sent)
    stream.receive_arrays(sender.endpoint, targets, stream.HostBuffers(targets), 1, 20)
    thread.join(60)
    assert failures == []
    assert [a.asnumpy().tobytes() for a in targets] == [v.tobytes() for v in values]


def test_a_receiver_with_another_layout_is_refused_on_both_sides():
    sent = root_arrays()
    sender = stream.StateSender("127.0.0.1", sent, stream.HostBuffers(sent), timeout=20)
    thread, failures = serve_in_thread(sender, [1])
    other = empty_like(sent[:-1]) + [mx.nd.zeros((5,), dtype="float32")]
    with pytest.raises(RuntimeError, match="another layout"):
        stream.receive_arrays(sender.endpoint, other, stream.HostBuffers(other), 1, 20)
    thread.join(60)
    assert len(failures) == 1 and "rank 1 expects another layout" in str(failures[0])


def test_strangers_are_ignored_and_a_missing_receiver_fails_after_the_timeout():
    sent = root_arrays()[:2]
    sender = stream.StateSender("127.0.0.1", sent, stream.HostBuffers(sent), timeout=1.0)
    thread, failures = serve_in_thread(sender, [1, 2])
    address, port, _ = sender.endpoint
    with socket.create_connection((address, port)) as stranger:   # wrong token
        stranger.sendall(stream._HELLO.pack(stream._MAGIC, 2, b"x" * 16,  # pylint: disable=protected-access
                                            stream.layout_digest(sent)))
        assert stranger.recv(1) == b""   # closed without a byte of the state
    target = empty_like(sent)
    stream.receive_arrays(sender.endpoint, target, stream.HostBuffers(target), 1, 20)
    thread.join(60)
    assert [bits(a) for a in target] == [bits(a) for a in sent]
    assert len(failures) == 1 and isinstance(failures[0], HorovodInternalError)
    assert "ranks [2] did not connect" in str(failures[0])


def test_a_sender_that_dies_mid_stream_fails_the_receiver():
    sent = root_arrays()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    token = b"t" * 16

    def die_after_some_bytes():
        conn, _ = listener.accept()
        conn.recv(stream._HELLO.size)  # pylint: disable=protected-access
        conn.sendall(b"\1" + bits(sent[0])[:1000])
        conn.close()

    thread = threading.Thread(target=die_after_some_bytes)
    thread.start()
    with pytest.raises(HorovodInternalError, match="state transfer from 127.0.0.1"):
        stream.receive_arrays(("127.0.0.1", listener.getsockname()[1], token),
                              empty_like(sent), stream.HostBuffers(sent), 1, 20)
    thread.join(60)
    listener.close()
