"""The platform's web server: granian (HTTP in Rust) serving the Django WSGI app.

    python -m platform.web [--host 0.0.0.0] [--port 8000] [--workers N] [--threads N]

Worker processes (`WEB_CONCURRENCY`, default 2), each running the WSGI app on a pool of
threads (`WEB_THREADS`, default 64). A request holds a thread only while Python runs it, and a
streaming response holds one while it waits for tokens, so a worker serves many slow clients at
once; HTTP parsing, keep-alive and writes happen in Rust, outside the GIL. The Procfile's `web`,
`make run`, the tests that start servers and the benchmarks all start it through this module.
"""

from __future__ import annotations

import argparse
import os
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m platform.web", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=DEFAULT_APP, help="WSGI target, module:attribute")
    parser.add_argument("--factory", action="store_true", help="the target is a function that builds the app")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, help="processes (WEB_CONCURRENCY, default 2)")
    parser.add_argument("--threads", type=int, help="threads per process (WEB_THREADS, default 64)")
    args = parser.parse_args(argv)
    server(
        app=args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        factory=args.factory,
    ).serve()


if __name__ == "__main__":
    main()
