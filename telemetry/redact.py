"""Task arguments for spans and logs (only with ``record_args=True``): truncated, redacted."""

from __future__ import annotations

import re
from typing import Any

MAX_VALUE_CHARS = 200
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|token|secret|authorization|auth|api[_-]?key|cookie|session|credential",
    re.IGNORECASE,
)


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        return f"{text[:MAX_VALUE_CHARS]}…(+{len(text) - MAX_VALUE_CHARS} chars)"
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _clean(v) for k, v in value.items()}
    return value


def describe_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[str], dict[str, str]]:
    """Positional and keyword arguments as short strings; secret-looking keys are redacted
    (also inside dict arguments)."""
    positional = [_short(_clean(a)) for a in args]
    keywords = {
        k: REDACTED if _SECRET_KEY.search(k) else _short(_clean(v)) for k, v in kwargs.items()
    }
    return positional, keywords
