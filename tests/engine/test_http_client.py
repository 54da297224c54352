"""The openai backend's HTTP/1.1 client against scripted servers: each framing of a body, and
keep-alive connections the server closes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from inference.engine.http import Client, ProtocolError


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A server that answers the n-th request on any connection with answers[n]; a
    connection is closed after an answer when its index is in `close_after`."""
    answers: list[bytes] = []
    close_after: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    served = [0]

    def handle(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                index = served[0]
                served[0] += 1
                conn.sendall(answers[index])
                if index in close_after:
                    return

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{port}/v1", answers, close_after
    listener.close()


def _client(base: str) -> Client:
    return Client(base_url=base, headers={"Authorization": "Bearer k"}, timeout=5)


def test_content_length_chunked_and_close_framed_bodies(scripted) -> None:
    base, answers, close_after = scripted
    answers += [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"b"\r\n4;x=y\r\n: 2}\r\n0\r\n\r\n',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
        b'HTTP/1.0 200 OK\r\n\r\n{"c": 3}',
    ]
    close_after.append(3)
    client = _client(base)
    assert client.post("/chat/completions", {}, stream=False).json() == {"a": 1}
    assert client.post("/chat/completions", {}, stream=False).json() == {"b": 2}
    created = client.post("/chat/completions", {}, stream=False)
    assert created.status_code == 201 and created.json() == {}
    assert client.post("/chat/completions", {}, stream=False).json() == {"c": 3}


def test_a_kept_connection_the_server_closed_is_replaced(scripted) -> None:
    base, answers, close_after = scripted
    answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"] * 3
    close_after.append(0)  # the server drops the connection after its first answer
    client = _client(base)
    assert client.post("/x", {}, stream=False).status_code == 200
    assert client.post("/x", {}, stream=False).status_code == 200


def test_a_body_cut_short_is_an_error_not_a_truncated_answer(scripted) -> None:
    base, answers, close_after = scripted
    answers.append(b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"partial"')
    close_after.append(0)
    with pytest.raises(ProtocolError):
        _client(base).post("/x", {}, stream=False)


def test_garbage_is_a_protocol_error(scripted) -> None:
    base, answers, close_after = scripted
    answers.append(b"SSH-2.0-OpenSSH\r\n\r\n")
    close_after.append(0)
    with pytest.raises(ProtocolError):
        _client(base).post("/x", {}, stream=False)
