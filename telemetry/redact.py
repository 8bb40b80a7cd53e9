"""What may leave the process: secrets scrubbed from any text (always), task arguments
described safely (only with ``record_args=True``), failures described without raising.

Scrubbing is on whatever ``record_args`` says: exception messages (httpx puts the request
URL, query string included, into ``raise_for_status`` errors) reach span status, the
``exception`` event and the failure log line. A key is sensitive when its lowercased name,
``-`` read as ``_``, contains one of :data:`SENSITIVE_KEYS` (or of the words added with
:func:`add_sensitive_keys`): ``x-api-key``, ``client_secret``, ``set-cookie`` all match.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import linecache
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tasklens.runtime import TaskRecord

from .contract import error_type

MAX_VALUE_CHARS = 200
REDACTED = "[redacted]"
#: Words that make a key (query parameter, header, dict key, argument name) sensitive.
SENSITIVE_KEYS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "auth",
    "cookie", "session", "credential", "private_key", "signature",
)  # fmt: skip
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_MAX_FRAMES = 100  # per exception: first and last 50 (a RecursionError has ~1000)
_MAX_CHAIN = 20  # exceptions of one failure (causes, contexts, group members)
_words: tuple[str, ...] = SENSITIVE_KEYS
_FAILURE_KEY = object()  # the task's Failure, in its observer_state


def add_sensitive_keys(*words: str) -> None:
    """Extend the sensitive-key list for this process (``add_sensitive_keys("ssn", "iban")``);
    applies to spans and logs from now on. Words match as substrings, case-insensitively."""
    global _words, _text_patterns
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"add_sensitive_keys: expected non-empty strings, got {word!r}")
    _words = (*_words, *(w.strip().lower().replace("-", "_") for w in words))
    _text_patterns = _compile(_words)
    is_sensitive.cache_clear()


@functools.lru_cache(maxsize=4096)
def is_sensitive(key: str) -> bool:
    """True when ``key`` names a secret (see the module docstring)."""
    normal = key.lower().replace("-", "_")
    return any(word in normal for word in _words)


def _compile(
    words: tuple[str, ...],
) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    names = "|".join(re.escape(w).replace("_", "[_-]?") for w in sorted(set(words), key=len)[::-1])
    key = rf"[\w.-]*(?:{names})[\w.-]*"
    quoted = r"""(?P<q>["'])(?:(?!(?P=q)).)*(?P=q)"""
    bare = r"""(?:(?:bearer|basic|digest|token)\s+)?[^\s&,;"'<>)\]}]+"""  # "Bearer abc"
    value = rf"{quoted}|\[redacted\]|{bare}"
    pair = re.compile(
        # key = value, key: value, "key": "value" (an optional closing quote before = or :),
        # and the ('key', 'value') / (b'key', b'value') pairs of header lists.
        rf"""(?<![\w.-])(?P<key>{key})(?P<sep>["']?\s*[=:]\s*)(?P<val>{value})"""
        rf"""|(?<=["'])(?P<key2>{key})(?P<sep2>["']\s*,\s*b?)(?P<val2>(?P<q2>["'])(?:(?!(?P=q2)).)*(?P=q2))""",
        re.IGNORECASE,
    )
    credentials = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*):[^@\s/'\"]+@", re.I)
    squashed = re.compile("|".join(sorted({re.escape(w.replace("_", "")) for w in words})))
    return credentials, pair, squashed


_text_patterns = _compile(_words)
#: A bearer token standing alone, not after a sensitive key ("sent Bearer eyJ..."): 16 or
#: more token characters after the scheme word ("the bearer of" is prose).
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/-]{16,}=*", re.IGNORECASE)


def _redact_pair(match: re.Match[str]) -> str:
    if match.group("key") is not None:
        key, sep, quote = match.group("key", "sep", "q")
    else:
        key, sep, quote = match.group("key2", "sep2", "q2")
    if quote:
        return f"{key}{sep}{quote}{REDACTED}{quote}"
    return f"{key}{sep}{REDACTED}"


def scrub(text: str) -> str:
    """``text`` with URL passwords (``scheme://user:[redacted]@host``), bearer tokens
    (``Bearer [redacted]``) and the values of sensitive keys (``api_key=[redacted]``,
    ``'password': '[redacted]'``) replaced."""
    credentials, pair, squashed_words = _text_patterns
    if "://" in text:
        text = credentials.sub(rf"\g<head>:{REDACTED}@", text)
    lowered = text.lower()
    # Most text names no sensitive word: a literal search (~1 us) spares the full regex.
    squashed = lowered.replace("_", "").replace("-", "")
    if squashed_words.search(squashed) is not None:
        text = pair.sub(_redact_pair, text)
    if "bearer" in lowered:
        text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return text


# --- task arguments (record_args=True) ---------------------------------------------------


class _Redacted:
    """Stands for a redacted value inside a container's repr."""

    def __repr__(self) -> str:
        return repr(REDACTED)


_REDACTED_VALUE = _Redacted()


class _Named:
    """A cleaned mapping shown under its type's name (``Headers({...})``)."""

    def __init__(self, name: str, items: dict[Any, Any]) -> None:
        self.name, self.items = name, items

    def __repr__(self) -> str:
        return f"{self.name}({self.items!r})"


def _key_text(key: Any) -> str | None:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("latin-1")
    return None


def _secret_key(key: Any) -> bool:
    text = _key_text(key)
    return text is not None and is_sensitive(text)


def _clean(value: Any, depth: int = 0) -> Any:
    """Containers rebuilt with the values of sensitive keys replaced: mappings (dict,
    Starlette ``Headers``), lists and tuples, and (key, value) pairs such as raw ASGI headers."""
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        try:
            items = {
                k: _REDACTED_VALUE if _secret_key(k) else _clean(v, depth + 1)
                for k, v in value.items()
            }
        except Exception:  # a Mapping whose items() misbehaves: its repr is scrubbed later
            return value
        return items if type(value) is dict else _Named(type(value).__name__, items)
    if type(value) in (list, tuple):  # not namedtuples: their repr names their fields
        if len(value) == 2 and _secret_key(value[0]):
            return type(value)((value[0], _REDACTED_VALUE))
        return type(value)(_clean(v, depth + 1) for v in value)
    return value


def safe_repr(value: Any) -> tuple[str, bool]:
    """``repr(value)``, cut at :data:`MAX_VALUE_CHARS` and scrubbed; ``<unrepresentable T>``
    if ``repr`` raises (an ORM object whose session closed). The flag tells a fallback."""
    try:
        text = scrub(repr(_clean(value)))
    except Exception:
        return f"<unrepresentable {_type_name(value)}>", True
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}…(+{len(text) - MAX_VALUE_CHARS} chars)"
    return text, False


def _type_name(value: Any) -> str:
    try:
        return type(value).__qualname__
    except Exception:
        return "object"


def _positional_names(func: Callable[..., Any] | None) -> list[str]:
    """Names of the parameters positional arguments bind to (empty if unknown)."""
    if func is None:
        return []
    try:
        parameters = inspect.signature(func).parameters.values()
    except Exception:  # TypeError, ValueError; anything from a custom __signature__
        return []
    names = []
    for parameter in parameters:
        if parameter.kind not in _POSITIONAL:
            break
        names.append(parameter.name)
    return names


@dataclass(frozen=True)
class Arguments:
    """A task's arguments as short, scrubbed strings; ``fallbacks`` counts unrepresentable ones."""

    args: list[str]
    kwargs: dict[str, str]
    fallbacks: int


def describe_args(
    args: tuple[Any, ...], kwargs: dict[str, Any], func: Callable[..., Any] | None = None
) -> Arguments:
    """Positional and keyword arguments as short strings, never raising. Redacted: values of
    sensitive keys (keyword names, keys inside mappings and pairs, the parameter names
    positional arguments bind to), URL passwords and sensitive query values in any repr."""
    names = _positional_names(func) if args else []
    fallbacks = 0
    positional = []
    for i, value in enumerate(args):
        if i < len(names) and is_sensitive(names[i]):
            positional.append(REDACTED)
            continue
        text, failed = safe_repr(value)
        fallbacks += failed
        positional.append(text)
    keywords = {}
    for key, value in kwargs.items():
        if is_sensitive(key):
            keywords[key] = REDACTED
            continue
        keywords[key], failed = safe_repr(value)
        fallbacks += failed
    return Arguments(positional, keywords, fallbacks)


# --- failures (always) -------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """An exception as it may be recorded: class, scrubbed message and stack trace."""

    type: str
    message: str
    stacktrace: str
    #: Parts replaced by a fallback (``<unrepresentable T>``): ``str()`` or formatting raised.
    fallbacks: int


def describe_failure(exc: BaseException) -> Failure:
    """The exception's message and stack trace, scrubbed, never raising, reading no file on
    the event loop: source lines come from ``linecache`` only if already loaded there (off
    the loop, e.g. a sync task's worker thread, they are read as the stdlib does)."""
    kind = error_type(exc)
    counter = [0]
    try:
        message = scrub(_message(exc, counter))
    except Exception:
        message, counter[0] = f"<unrepresentable {kind}>", counter[0] + 1
    try:
        read_files = not _on_event_loop()
        lines: list[str] = []
        _format_chain(exc, lines, set(), read_files, [0], "")  # a message fallback counts once
        stacktrace = scrub("".join(lines))
    except Exception:
        stacktrace, counter[0] = f"<unrepresentable traceback of {kind}>\n", counter[0] + 1
    return Failure(kind, message, stacktrace, counter[0])


def task_failure(task: TaskRecord) -> Failure | None:
    """:func:`describe_failure` of the task's error, made once for all observers."""
    if task.error is None:
        return None
    failure = task.observer_state.get(_FAILURE_KEY)
    if failure is None:
        failure = task.observer_state[_FAILURE_KEY] = describe_failure(task.error)
    return failure


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _message(exc: BaseException, counter: list[int]) -> str:
    try:
        return str(exc)
    except Exception:
        counter[0] += 1
        return f"<unrepresentable {error_type(exc)}>"


def _source_line(filename: str, lineno: int, read_files: bool) -> str:
    if read_files:
        return linecache.getline(filename, lineno).strip()
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) != 4:  # absent, or lazy (reading it would open the file)
        return ""
    source = entry[2]
    return source[lineno - 1].strip() if 0 < lineno <= len(source) else ""


def _frames(tb: TracebackType | None, read_files: bool) -> list[str]:
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        lineno = tb.tb_lineno
        text = f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n'
        line = _source_line(code.co_filename, lineno, read_files)
        frames.append(f"{text}    {line}\n" if line else text)
        tb = tb.tb_next
    if len(frames) > _MAX_FRAMES:
        half = _MAX_FRAMES // 2
        omitted = f"  [... {len(frames) - _MAX_FRAMES} frames omitted ...]\n"
        frames = [*frames[:half], omitted, *frames[-half:]]
    return frames


def _format_chain(
    exc: BaseException,
    lines: list[str],
    seen: set[int],
    read_files: bool,
    counter: list[int],
    indent: str,
) -> None:
    """The stdlib's layout (causes first, then 'The above exception...'), without source
    files unless allowed; exception groups list their members indented."""
    seen.add(id(exc))
    if len(seen) > _MAX_CHAIN:
        lines.append(f"{indent}[... more chained exceptions omitted ...]\n")
        return
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        _format_chain(cause, lines, seen, read_files, counter, indent)
        lines.append(
            f"\n{indent}The above exception was the direct cause of the following exception:\n\n"
        )
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        _format_chain(context, lines, seen, read_files, counter, indent)
        lines.append(
            f"\n{indent}During handling of the above exception, another exception occurred:\n\n"
        )
    if exc.__traceback__ is not None:
        lines.append(f"{indent}Traceback (most recent call last):\n")
        lines.extend(indent + frame for frame in _frames(exc.__traceback__, read_files))
    message = _message(exc, counter)
    kind = error_type(exc)
    lines.append(f"{indent}{kind}: {message}\n" if message else f"{indent}{kind}\n")
    for note in getattr(exc, "__notes__", None) or ():
        lines.append(f"{indent}{note if isinstance(note, str) else '<note>'}\n")
    members = getattr(exc, "exceptions", None)
    if isinstance(exc, BaseExceptionGroup) and isinstance(members, tuple):
        for number, member in enumerate(members, 1):
            lines.append(f"{indent}  +---------------- {number} ----------------\n")
            if isinstance(member, BaseException) and id(member) not in seen:
                _format_chain(member, lines, seen, read_files, counter, indent + "  | ")
