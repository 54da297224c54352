from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform.settings.production")
application = get_wsgi_application()

# Many threads share one interpreter here. A thread back from I/O waits for the GIL until the
# running one blocks or the switch interval forces it out; the default (5 ms) forces switches in
# the middle of requests, which costs throughput under load (BENCHMARKS.md: gateway overhead).
sys.setswitchinterval(settings.WEB_GIL_SWITCH_INTERVAL_MS / 1000)

if settings.LLM_WARMUP:
    # Load the model now, in the background, rather than on the first request.
    from inference.services import router_get

    router_get().warm_up()
