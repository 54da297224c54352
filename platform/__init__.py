"""Configuration of the platform: settings, URLs, WSGI/ASGI entry points and the Celery app.

The folder is named ``platform`` as the design asks, which is also the name of a standard
library module that pytest, gunicorn, celery, uuid and torch import early. Two mechanisms keep
both working:

* When this package is imported first (``python manage.py`` without the project's virtual
  environment), it re-exports the standard library module's whole API, so any library's
  ``import platform; platform.system()`` keeps working.
* In the project's virtual environment a ``.pth`` file (written by ``make venv``, see
  ``platform/pathhook.py``) gives the standard library module, imported first, a ``__path__``
  that points at this folder, so ``platform.settings`` and friends import whatever imported
  ``platform`` first.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

_stdlib_path = os.path.join(sysconfig.get_paths()["stdlib"], "platform.py")
_spec = importlib.util.spec_from_file_location("_stdlib_platform", _stdlib_path)
assert _spec is not None and _spec.loader is not None
_stdlib_platform = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_stdlib_platform)
globals().update({name: value for name, value in vars(_stdlib_platform).items() if not name.startswith("__")})
