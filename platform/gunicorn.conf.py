"""gunicorn settings for the platform (the Procfile's `web` and `make run`).

Threads, not one process per connection: a streaming response holds its thread while it
waits for tokens, so a worker with many threads serves many slow clients at once."""

from __future__ import annotations

import os

wsgi_app = "platform.wsgi:application"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
keepalive = 30
# Caps the connections one worker holds, so that keep-alive clients spread over the workers
# instead of piling onto whichever accepted first.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
accesslog = None
