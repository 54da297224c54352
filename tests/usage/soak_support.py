"""What the fault-soak test (`test_fault_soak.py`) needs beyond the suite's fixtures: a private
Redis it may stop and restart, an upstream slow enough that a job is still running when its
worker is killed, processes it can kill as a machine dies (the whole process group), and the
client side of the traffic: whole requests, and streams the client cuts half-way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from bench import fake_upstream
from bench.common import ROOT, free_port

# --- The worker's upstream --------------------------------------------------------------------


async def slow_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`bench.fake_upstream`, each completion answered `SOAK_UPSTREAM_DELAY` seconds late, so
    that a job is still running (its reservation adopted by the worker) when the test kills the
    worker. Run it with uvicorn, as the suite runs the fake upstream."""
    if scope["type"] != "http" or scope["method"] != "POST":
        await fake_upstream.app(scope, receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await asyncio.sleep(float(os.environ.get("SOAK_UPSTREAM_DELAY", "0.5")))
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return dict(await receive())
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    await fake_upstream.app(scope, replay, send)


# --- Processes ----------------------------------------------------------------------------------


class Processes:
    """Every process the test starts, each in its own process group (so that killing one kills
    its children too, as when its machine dies), with its output kept in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child holds it)
        try:
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self._started.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL to the process and its children: nothing runs its cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        running = [p for p in self._started if p.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process)
        # Children a stopped parent left behind (a prefork pool), by their group.
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port, that writes every command to
    its append-only file before answering: stopped and started again on the same port and
    folder, it has lost nothing."""

    def __init__(self, processes: Processes, directory: Path) -> None:
        self.processes = processes
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> None:
        self.process = self.processes.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
        )
        deadline = time.monotonic() + 30
        client = self.client()
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM, as a host's shutdown sends it."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)


# --- Traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """One planned request."""

    index: int
    tenant: str
    kind: str  # generate, stream, stream-full, rag, rag-stream, embeddings, job
    path: str
    body: dict[str, Any]
    at: float  # seconds after the traffic starts
    # A stream: how many token events the client reads before closing it (None: to the end).
    cut_after: int | None = 4

    @property
    def request_id(self) -> str:
        # Sent as X-Request-ID, which the server echoes and writes into the usage record.
        return f"soak-{self.index:04d}-{self.kind}"

    @property
    def streams(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass
class Outcome:
    shot: Shot
    server: str
    sent_at: float  # time.monotonic()
    done_at: float = 0.0
    status: int = 0  # 0: no HTTP answer, see `error`
    code: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token_events: int = 0  # events a stream delivered before the client closed it
    error: str | None = None


def send(
    server: str,
    secret: str,
    shot: Shot,
    *,
    answered: threading.Event | None = None,
    cut_when: threading.Event | None = None,
) -> Outcome:
    """Sends `shot`. A stream sets `answered` once its status line is in; the client cuts it
    after `shot.cut_after` token events, or, with `cut_when`, once that is set too (the stream
    meanwhile fills the socket's buffer)."""
    outcome = Outcome(shot=shot, server=server, sent_at=time.monotonic())
    try:
        if shot.streams:
            _stream(outcome, secret, answered, cut_when)
        else:
            _whole(outcome, secret)
    except Exception as exc:  # the outcome says what went wrong; the test judges it
        outcome.error = repr(exc)
    outcome.done_at = time.monotonic()
    return outcome


def _headers(secret: str, shot: Shot) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {secret}",
        "Content-Type": "application/json",
        "X-Request-ID": shot.request_id,
    }


def _whole(outcome: Outcome, secret: str) -> None:
    shot = outcome.shot
    request = urllib.request.Request(
        outcome.server + shot.path,
        data=json.dumps(shot.body).encode(),
        method="POST",
        headers=_headers(secret, shot),
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            outcome.status = response.status
            outcome.headers = {k.lower(): v for k, v in response.headers.items()}
            raw = response.read()
    except urllib.error.HTTPError as error:
        outcome.status = error.code
        outcome.headers = {k.lower(): v for k, v in error.headers.items()}
        raw = error.read()
    _read_json(outcome, raw)


def _read_json(outcome: Outcome, raw: bytes) -> None:
    try:
        outcome.body = json.loads(raw)
    except ValueError:
        outcome.body = {"unparsed": raw[:500].decode(errors="replace")}
        return
    if isinstance(outcome.body, dict) and isinstance(outcome.body.get("error"), dict):
        outcome.code = outcome.body["error"].get("code")


def _stream(
    outcome: Outcome, secret: str, answered: threading.Event | None, cut_when: threading.Event | None
) -> None:
    """Reads the status, then the events: to the end, or a few before closing the socket."""
    shot = outcome.shot
    parsed = urlparse(outcome.server)
    body = json.dumps(shot.body).encode()
    head_lines = [f"POST {shot.path} HTTP/1.1", f"Host: {parsed.hostname}:{parsed.port}", "Connection: close"]
    head_lines += [f"{name}: {value}" for name, value in _headers(secret, shot).items()]
    head_lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head_lines) + "\r\n\r\n").encode() + body
    assert parsed.hostname is not None and parsed.port is not None
    with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the headers: {received[:200]!r}")
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        outcome.status = int(status_line.split(" ", 2)[1])
        if answered is not None:
            answered.set()
        for line in header_lines:
            name, _, value = line.partition(":")
            outcome.headers[name.strip().lower()] = value.strip()
        chunked = outcome.headers.get("transfer-encoding", "").lower() == "chunked"
        if outcome.status != 200 or shot.cut_after is None:
            while chunk := sock.recv(65536):  # Connection: close, so the server closes
                rest += chunk
            rest = _dechunk(rest) if chunked else rest
            if outcome.status != 200:
                _read_json(outcome, rest)
                return
            outcome.token_events = rest.count(b"event: token")
            done = rest.rpartition(b"event: done\ndata: ")[2].partition(b"\n\n")[0]
            _read_json(outcome, done)
            return
        while rest.count(b"event: token") < shot.cut_after:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        outcome.token_events = rest.count(b"event: token")
        if cut_when is not None:
            cut_when.wait(timeout=30)
        if b"event: done" in rest:
            outcome.error = "the stream ended before the client cut it"


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out
