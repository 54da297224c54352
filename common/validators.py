"""Validators that state a serializer field's rule in the OpenAPI schema as well (drf-spectacular
writes a RegexValidator's regex into the field's `pattern`)."""

from __future__ import annotations

from django.core.validators import RegexValidator

# A text field that may not be blank holds a character that `str.strip()` keeps: DRF trims a
# CharField before its blank check, and a prompt is refused when only whitespace. Python's `\s`
# already counts \x1c-\x1f and \x85 as whitespace; they are spelled out for ECMA's `\s`, which
# does not, so that the schema's pattern means the same to every client.
NON_BLANK = RegexValidator(r"[^\s\x1c-\x1f\x85]", message="This field may not be blank.", code="blank")
