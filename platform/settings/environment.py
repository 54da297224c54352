"""Reading the environment strictly: a value that does not parse stops the start."""

from __future__ import annotations

import re
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]*")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class StrictEnv(environ.Env):
    """django-environ reads any word it does not know as false, so `DJANGO_SECURE_COOKIES=ture`
    would silently turn secure cookies off; here it is an error (healthchecks.io parses its
    booleans the same way)."""

    def bool(self, var: str, default: Any = environ.Env.NOTSET) -> bool:  # type: ignore[override]
        raw = self.ENVIRON.get(var)
        if raw is None:
            if default is environ.Env.NOTSET:
                raise ImproperlyConfigured(f"Set the {var} environment variable.")
            return bool(default)
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ImproperlyConfigured(
            f"{var}={raw!r} is not a boolean: use true or false (1/0, yes/no, on/off)."
        )

    def addresses(self, var: str) -> list[str]:
        """A comma-separated list of `host:port`; empty when unset."""
        raw = self.ENVIRON.get(var, "")
        found = [part.strip() for part in raw.split(",") if part.strip()]
        for address in found:
            host, _, port = address.rpartition(":")
            if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
                raise ImproperlyConfigured(f"{var}: {address!r} is not host:port.")
        return found
