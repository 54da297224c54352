from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform.settings.production")
application = get_wsgi_application()

if settings.LLM_WARMUP:
    # Load the model now, in the background, rather than on the first request.
    from inference.services import handler_get

    handler_get().warm_up()
