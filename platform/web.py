"""The platform's web server: granian (HTTP in Rust) serving the Django WSGI app.

    python -m platform.web [--host 0.0.0.0] [--port 8000] [--workers N] [--threads N]

Worker processes (`WEB_CONCURRENCY`, default 2), each running the WSGI app on a pool of
threads (`WEB_THREADS`, default 64). A request holds a thread only while Python runs it, and a
streaming response holds one while it waits for tokens, so a worker serves many slow clients at
once; HTTP parsing, keep-alive and writes happen in Rust, outside the GIL. The Procfile's `web`,
`make run`, the tests that start servers and the benchmarks all start it through this module.

Metrics: the workers count in files under `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's
multiprocess mode), so that /metrics, answered by any worker, adds up all of them. The folder
is emptied at start; without the variable, a fresh temporary folder is used and removed at exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence

from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import MPServer

DEFAULT_APP = "platform.wsgi:application"


def server(
    *,
    app: str = DEFAULT_APP,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    threads: int | None = None,
    factory: bool = False,
) -> MPServer:
    return MPServer(
        app,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers or int(os.environ.get("WEB_CONCURRENCY", "2")),
        blocking_threads=threads or int(os.environ.get("WEB_THREADS", "64")),
        factory=factory,
        websockets=False,
        http1_settings=HTTP1Settings(keep_alive=True),
        log_level=LogLevels(os.environ.get("WEB_LOG_LEVEL", "warning")),
        log_access=os.environ.get("WEB_ACCESS_LOG", "") == "1",
        respawn_failed_workers=True,
        workers_kill_timeout=int(os.environ.get("WEB_KILL_TIMEOUT", "30")),
    )


def metrics_dir_prepare() -> str | None:
    """Point the workers at an empty multiprocess folder; returns the folder to remove at exit
    (one made here), or None (the operator's, kept for inspection)."""
    created = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        created = tempfile.mkdtemp(prefix="llmp-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    # Imported once the variable is set: prometheus_client picks its storage when imported,
    # and workers forked from this process inherit that choice.
    from common.metrics import multiprocess_dir_reset

    multiprocess_dir_reset(path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return created


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m platform.web", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=DEFAULT_APP, help="WSGI target, module:attribute")
    parser.add_argument("--factory", action="store_true", help="the target is a function that builds the app")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, help="processes (WEB_CONCURRENCY, default 2)")
    parser.add_argument("--threads", type=int, help="threads per process (WEB_THREADS, default 64)")
    args = parser.parse_args(argv)
    created = metrics_dir_prepare()
    try:
        server(
            app=args.app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            factory=args.factory,
        ).serve()
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)


if __name__ == "__main__":
    main()
