"""Hand-offs over a real Unix datagram socket: what arrives, and what receiving one costs."""

from __future__ import annotations

import socket
import tracemalloc

from camservice import handoff


def hand_over(tmp_path, heads: list[bytes]) -> tuple[socket.socket, list[socket.socket]]:
    """Bind a receiver, hand it one end of a socket pair per head; the receiver and the other ends."""
    receiver = handoff.bind_receiver(handoff.socket_path(tmp_path, 0))
    sender = handoff.Sender(tmp_path)
    peers = []
    for head in heads:
        handed, peer = socket.socketpair()
        assert sender.send(handed.fileno(), handoff.pack(head, "10.0.0.7", "http"))
        handed.close()  # the datagram in flight holds its own reference
        peers.append(peer)
    sender.close()
    return receiver, peers


def test_each_hand_off_arrives_with_its_bytes_and_a_working_socket(tmp_path):
    heads = [b"GET /files/recordings/a.mp4 HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 80, b""]
    receiver, peers = hand_over(tmp_path, heads)
    got = handoff.receive(receiver)
    assert [(raw, peer, scheme) for _, raw, peer, scheme in got] == [(h, "10.0.0.7", "http") for h in heads]
    for (connection, *_), peer in zip(got, peers):
        peer.sendall(b"ping")
        connection.setblocking(True)
        connection.settimeout(5)
        assert connection.recv(16) == b"ping"
        connection.close()
        peer.close()
    receiver.close()


def test_receiving_takes_no_buffer_per_hand_off(tmp_path):
    receiver, peers = hand_over(tmp_path, [b"GET / HTTP/1.1\r\n\r\n"] * 8)
    with handoff.bind_receiver(handoff.socket_path(tmp_path, 1)) as empty:
        handoff.receive(empty)  # this thread's buffer exists from here on
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        got = handoff.receive(receiver)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == 8  # a Unix datagram queue holds 10 by default
    # recvmsg(MAX_MESSAGE) took a MAX_MESSAGE bytes object per datagram (and one more to see the queue empty).
    assert peak - before < handoff.MAX_MESSAGE
    for connection, *_ in got:
        connection.close()
    for peer in peers:
        peer.close()
    receiver.close()
