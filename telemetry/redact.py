"""Task arguments for spans and logs (only with ``record_args=True``): truncated, redacted."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

MAX_VALUE_CHARS = 200
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|token|secret|authorization|auth|api[_-]?key|cookie|session|credential",
    re.IGNORECASE,
)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        return f"{text[:MAX_VALUE_CHARS]}…(+{len(text) - MAX_VALUE_CHARS} chars)"
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, list) or type(value) is tuple:
        return type(value)(_clean(v) for v in value)
    return value


def _positional_names(func: Callable[..., Any] | None) -> list[str]:
    """Names of the parameters positional arguments bind to (empty if unknown)."""
    if func is None:
        return []
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    names = []
    for parameter in parameters:
        if parameter.kind not in _POSITIONAL:
            break
        names.append(parameter.name)
    return names


def describe_args(
    args: tuple[Any, ...], kwargs: dict[str, Any], func: Callable[..., Any] | None = None
) -> tuple[list[str], dict[str, str]]:
    """Positional and keyword arguments as short strings; secret-looking keys are redacted
    (also inside dict and list arguments), and so are positional arguments whose parameter
    of ``func`` has a secret-looking name (``add_task(login, "ada", "hunter2")``)."""
    names = _positional_names(func) if args else []
    positional = [
        REDACTED if i < len(names) and _SECRET_KEY.search(names[i]) else _short(_clean(a))
        for i, a in enumerate(args)
    ]
    keywords = {
        k: REDACTED if _SECRET_KEY.search(k) else _short(_clean(v)) for k, v in kwargs.items()
    }
    return positional, keywords
