"""A Redis Cluster of three primaries on loopback ports: the tests start one for the session, the
admission benchmark one for its run. Optionally with a password and TLS (a CA and a certificate
for 127.0.0.1 made with openssl in its folder), as a managed cluster asks for."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

NODES = 3
# A node also listens on its port + 10000 (the cluster bus).
BUS_OFFSET = 10_000


class LocalRedisCluster:
    def __init__(self, *, password: str | None = None, tls: bool = False) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports = _node_ports(NODES)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.password = password
        self.tls = tls

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def ca_file(self) -> Path:
        """The CA that signed the nodes' certificate (with `tls`)."""
        return self.directory / "ca.crt"

    def client_options(self) -> dict[str, Any]:
        """What a redis-py client needs to reach a node."""
        options: dict[str, Any] = {}
        if self.password:
            options["password"] = self.password
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.ca_file))
        return options

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # no node outlives a start that failed
            raise

    def _node_options(self, port: int) -> list[str]:
        options = ["--port", str(port)]
        if self.password:
            options += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls:
            options = [
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cluster", "yes",
                "--tls-replication", "yes",
                "--tls-cert-file", str(self.directory / "node.crt"),
                "--tls-key-file", str(self.directory / "node.key"),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
            ] + options[2:]  # fmt: skip
        return options

    def _cli_options(self) -> list[str]:
        options = ["--no-auth-warning", "-a", self.password] if self.password else []
        return options + (["--tls", "--cacert", str(self.ca_file)] if self.tls else [])

    def _start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        if self.tls:
            _certificates(self.directory)
        for port in self.ports:
            self.processes.append(
                subprocess.Popen(
                    [
                        server,
                        *self._node_options(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                        "--dir", str(self.directory),
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                    ],
                    stdout=(self.directory / f"redis-{port}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        for port in self.ports:
            self._wait(
                lambda port=port: redis.Redis(host="127.0.0.1", port=port, **self.client_options()).ping()
            )
        subprocess.run(
            [
                "redis-cli",
                *self._cli_options(),
                "--cluster", "create", *self.nodes,
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        for port in self.ports:  # every node knows every slot's owner
            self._wait(lambda port=port: self._cluster_info(port).get("cluster_state") == "ok")

    def _cluster_info(self, port: int) -> dict[str, Any]:
        node = redis.Redis(host="127.0.0.1", port=port, **self.client_options())
        info: dict[str, Any] = node.execute_command("CLUSTER INFO")  # parsed by redis-py
        return info

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait(self, ready: Callable[[], object]) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            for process in self.processes:
                if process.poll() is not None:
                    logs = "".join(
                        log.read_text(errors="replace")[-2000:] for log in self.directory.glob("*.log")
                    )
                    raise RuntimeError(f"redis-server exited with {process.returncode}: {logs}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster in {self.directory} did not come up")
            time.sleep(0.05)


def _node_ports(count: int) -> list[int]:
    """Free ports whose bus ports are free too (the kernel's ephemeral ports plus 10000 may pass
    65535)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _certificates(directory: Path) -> None:
    """A CA and a certificate for 127.0.0.1 that it signs (a day's validity is plenty)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=llm-platform test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "node.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "node.crt", "-days", "1", "-extfile", "node.ext")  # fmt: skip


def redis_server_missing() -> bool:
    """Without redis-server (and its redis-cli) the cluster tests skip, except on CI, where
    they must run."""
    if shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None:
        return False
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("CI must run the Redis Cluster tests: install redis-server")
    return True
