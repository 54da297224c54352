"""A lean HTTP/1.1 client for the openai backend. The gateway calls its upstream on every
request, and httpx spends several times more CPU per call (URL and header models, h11, its
transport stack) than the request itself needs; on a 2-core gateway that is the difference
between hundreds and a thousand requests per second.

A plain request goes over the calling thread's keep-alive connection (`_Connection`): the
request is written in one piece and the answer read with a minimal parser (status line,
headers, a body framed by Content-Length or chunked); `http.client` spends as much CPU again
parsing headers through the `email` package. A stream gets an `http.client` connection of its
own, closed with it."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit


class ProtocolError(http.client.HTTPException):
    """The upstream's answer is not the HTTP/1.1 this client reads."""


# What a failed exchange raises: the socket's errors and the protocol's.
TransportErrors = (OSError, http.client.HTTPException)

_MAX_LINE = 65_536
_MAX_HEADERS = 100


class Response:
    """A streamed answer (`http.client`), read incrementally with `iter_lines`; closing it
    closes its connection (a stream cut short leaves unread bytes on it)."""

    def __init__(self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection) -> None:
        self._raw = raw
        self._connection = connection
        self.status_code = raw.status

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def read(self) -> bytes:
        try:
            return self._raw.read()
        finally:
            self.close()

    def json(self) -> Any:
        return json.loads(self.read())

    def iter_lines(self) -> Iterator[str]:
        for line in self._raw:
            yield line.decode("utf-8").rstrip("\r\n")

    def close(self) -> None:
        self._raw.close()
        self._connection.close()


class BufferedResponse:
    """A plain answer, read whole."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self._body = body

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def read(self) -> bytes:
        return self._body

    def json(self) -> Any:
        return json.loads(self._body)

    def iter_lines(self) -> Iterator[str]:
        yield from self._body.decode("utf-8").splitlines()

    def close(self) -> None:
        pass


AnyResponse = Response | BufferedResponse


class _Connection:
    """One keep-alive connection: writes a request, reads its answer."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self._reader = self._sock.makefile("rb")
        self.open = True

    def exchange(self, request: bytes) -> BufferedResponse:
        self._sock.sendall(request)
        status, headers = self._read_head()
        while status == 100:  # "100 Continue" precedes the real answer
            status, headers = self._read_head()
        encoding = headers.get(b"transfer-encoding", b"").lower()
        if b"chunked" in encoding:
            body = self._read_chunked()
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            body = self._reader.read(length)
            if len(body) != length:
                raise ProtocolError(f"the upstream closed after {len(body)} of {length} bytes")
        else:  # framed by closing the connection
            body = self._reader.read()
            self.open = False
        if headers.get(b"connection", b"").lower() == b"close":
            self.open = False
        return BufferedResponse(status, body)

    def _line(self) -> bytes:
        line = self._reader.readline(_MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the upstream closed the connection")
        if len(line) > _MAX_LINE:
            raise ProtocolError("header line too long")
        return line

    def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {parts!r}")
        headers: dict[bytes, bytes] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                if parts[0] == b"HTTP/1.0" and headers.get(b"connection", b"").lower() != b"keep-alive":
                    headers[b"connection"] = b"close"
                return int(parts[1]), headers
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        raise ProtocolError("too many headers")

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self._line().split(b";", 1)[0], 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self._reader.read(size))
            self._line()  # the CRLF after the chunk

    def close(self) -> None:
        self.open = False
        self._reader.close()
        self._sock.close()


class Client:
    """POSTs JSON to paths under `base_url`. Plain requests reuse the calling thread's
    connection; a stream gets a connection of its own, closed with it, since a stream cut short
    leaves unread bytes on its connection."""

    def __init__(self, *, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._timeout = timeout
        self._local = threading.local()
        self._tls = ssl.create_default_context() if self._https else None
        default_port = 443 if self._https else 80
        self._host_header = self._host if self._port in (None, default_port) else f"{self._host}:{self._port}"

    def _connect(self) -> http.client.HTTPConnection:
        factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return factory(self._host, self._port, timeout=self._timeout)

    def post(self, path: str, payload: dict[str, Any], *, stream: bool) -> AnyResponse:
        body = json.dumps(payload).encode()
        if stream:
            own = self._connect()
            try:
                own.request("POST", self._prefix + path, body=body, headers=self._headers)
                return Response(own.getresponse(), own)
            except BaseException:
                own.close()
                raise
        request = self._head(path, len(body)) + body
        for attempt in (1, 2):
            kept: _Connection | None = getattr(self._local, "connection", None)
            fresh = kept is None
            connection = kept if kept is not None else self._open()
            self._local.connection = connection
            try:
                response = connection.exchange(request)
            except BaseException as exc:
                connection.close()
                self._local.connection = None
                # A kept-alive connection the server has since closed fails at once: try a new one.
                if fresh or attempt == 2 or not isinstance(exc, TransportErrors):
                    raise
                continue
            if not connection.open:
                connection.close()
                self._local.connection = None
            return response
        raise AssertionError("unreachable")

    def status_of(self, path: str, payload: dict[str, Any], *, timeout: float) -> int:
        """POSTs on a connection of its own, with its own timeout, and answers the status only
        (health checks)."""
        factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = factory(self._host, self._port, timeout=timeout)
        try:
            connection.request(
                "POST", self._prefix + path, body=json.dumps(payload).encode(), headers=self._headers
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def _open(self) -> _Connection:
        port = self._port or (443 if self._https else 80)
        return _Connection(self._host, port, tls=self._tls, timeout=self._timeout)

    def _head(self, path: str, length: int) -> bytes:
        lines = [f"POST {self._prefix}{path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in self._headers.items()]
        lines += [f"Content-Length: {length}", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
