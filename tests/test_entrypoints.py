"""The `platform/` package shares its name with the standard library's `platform` module. Each
entry point must still find `platform.settings`, and every library's `platform.system()` must
still work: proven here by starting each of them as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stdlib_platform_api_works_after_libraries_import_it_first() -> None:
    code = textwrap.dedent(
        """
        import uuid, platform, torch
        import platform.settings.base as base
        assert platform.system() and platform.python_version() and platform.machine() is not None
        print(platform.system(), base.__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [os.uname().sysname, "platform.settings.base"]


def test_project_package_stands_in_for_the_stdlib_module_without_the_path_hook() -> None:
    code = "import platform, uuid; print(platform.system(), platform.__file__)"
    # -S skips site-packages, and with it the .pth hook: the project's own package is imported.
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    system, path = result.stdout.split()
    assert system == os.uname().sysname
    assert path == str(ROOT / "platform" / "__init__.py")


def test_manage_py_runs() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_plain_pytest_finds_the_settings(tmp_path: Path) -> None:
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(
        "import platform\nfrom django.conf import settings\n\n"
        "def test_probe():\n    assert settings.ROOT_URLCONF == 'platform.urls'\n    assert platform.system()\n"
    )
    result = subprocess.run(
        [
            str(BIN / "pytest"),
            "-q",
            "-p",
            "no:cacheprovider",
            str(test_file),
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_web_server_of_the_procfile_serves_the_app() -> None:
    port = _free_port()
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)
    server = subprocess.Popen(
        ["bash", "-c", f"exec {procfile['web']}"],
        cwd=ROOT,
        env=_env(
            DJANGO_SETTINGS_MODULE="platform.settings.test",
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            PORT=str(port),
            WEB_CONCURRENCY="1",
            WEB_THREADS="2",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        server.stderr.read().decode() if server.stderr else "the web server died"
                    ) from None
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.skipif(not settings.CELERY_BROKER_URL, reason="needs a broker (REDIS_URL); CI sets it")
def test_celery_worker_of_the_procfile_starts_and_answers_a_ping() -> None:
    env = _env(DJANGO_SETTINGS_MODULE="platform.settings.test")
    worker = subprocess.Popen(
        [
            str(BIN / "celery"),
            "-A",
            "platform.celery:app",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "1",
            "--hostname",
            f"probe-{os.getpid()}@%h",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(
                [
                    str(BIN / "celery"),
                    "-A",
                    "platform.celery:app",
                    "inspect",
                    "ping",
                    "-d",
                    f"probe-{os.getpid()}@{socket.gethostname()}",
                    "--timeout",
                    "2",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            if "pong" in result.stdout:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(worker.stderr.read().decode() if worker.stderr else result.stderr)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.mark.skipif(not settings.CELERY_BROKER_URL, reason="needs a broker (REDIS_URL); CI sets it")
def test_celery_beat_of_the_procfile_starts_in_a_fresh_deployment(tmp_path: Path) -> None:
    """Beat's schedule file lives in the var folder, which a fresh clone or container lacks."""
    var = tmp_path / "var-not-created"
    env = _env(
        DJANGO_SETTINGS_MODULE="platform.settings.production",
        DJANGO_SECRET_KEY="entrypoint-" + "x" * 40,
        PLATFORM_VAR_DIR=str(var),
    )
    beat = subprocess.Popen(
        [str(BIN / "celery"), "-A", "platform.celery:app", "beat", "--loglevel", "INFO"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(var.glob("celerybeat-schedule*")):
            if beat.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(beat.stderr.read().decode() if beat.stderr else "beat died")
            time.sleep(0.3)
        time.sleep(1)
        assert beat.poll() is None
    finally:
        beat.terminate()
        beat.wait(timeout=30)
