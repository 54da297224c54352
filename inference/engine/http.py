"""A lean HTTP/1.1 client for the openai backend: `http.client` with one keep-alive connection
per thread. The gateway calls its upstream on every request, and httpx spends several times
more CPU per call (URL and header models, h11, its transport stack) than the request itself
needs; on a 2-core gateway that is the difference between hundreds and a thousand requests
per second."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

# What a failed exchange raises: the socket's errors and the protocol's.
TransportErrors = (OSError, http.client.HTTPException)


class Response:
    def __init__(
        self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection, *, reusable: bool
    ) -> None:
        self._raw = raw
        self._connection = connection
        self._reusable = reusable
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
        if not self._reusable:
            self._connection.close()


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

    def _connect(self) -> http.client.HTTPConnection:
        factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return factory(self._host, self._port, timeout=self._timeout)

    def post(self, path: str, payload: dict[str, Any], *, stream: bool) -> Response:
        body = json.dumps(payload).encode()
        if stream:
            connection = self._connect()
            try:
                connection.request("POST", self._prefix + path, body=body, headers=self._headers)
                return Response(connection.getresponse(), connection, reusable=False)
            except BaseException:
                connection.close()
                raise
        for attempt in (1, 2):
            kept: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
            fresh = kept is None
            connection = kept if kept is not None else self._connect()
            self._local.connection = connection
            try:
                connection.request("POST", self._prefix + path, body=body, headers=self._headers)
                return Response(connection.getresponse(), connection, reusable=True)
            except TransportErrors:
                connection.close()
                self._local.connection = None
                # A kept-alive connection the server has since closed fails at once: try a new one.
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
