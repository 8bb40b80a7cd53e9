"""Scrubbing (``tasklens.telemetry.redact``): URL passwords and sensitive key values out of
any text, header containers and URLs out of recorded arguments, and failures described
without raising and without reading source files on the event loop."""

from __future__ import annotations

import asyncio
import importlib.util
import linecache
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import URL, Headers, MutableHeaders

import tasklens
from tasklens.telemetry import redact
from tasklens.telemetry.redact import (
    REDACTED,
    describe_args,
    describe_failure,
    is_sensitive,
    scrub,
)

R = REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Client error '401 Unauthorized' for url 'https://api.test/v1?api_key=sk_live_1&page=2'",
         f"Client error '401 Unauthorized' for url 'https://api.test/v1?api_key={R}&page=2'"),
        ("postgresql://app:hunter2@db:5432/shop", f"postgresql://app:{R}@db:5432/shop"),
        ("redis://:s3cret@cache:6379/0", f"redis://:{R}@cache:6379/0"),
        ("https://github.com/org/repo", "https://github.com/org/repo"),
        ("Authorization: Bearer abc.def", f"Authorization: {R}"),
        ("x-api-key=k1; Set-Cookie: sid=1", f"x-api-key={R}; Set-Cookie: {R}"),
        ("{'password': 'hunter 2', 'user': 'ada'}", f"{{'password': '{R}', 'user': 'ada'}}"),
        ('{"access_token": "t1", "n": 1}', f'{{"access_token": "{R}", "n": 1}}'),
        ("[(b'authorization', b'Basic eA=='), (b'accept', b'*/*')]",
         f"[(b'authorization', b'{R}'), (b'accept', b'*/*')]"),
        ("client_secret=cs&sessionid=9&passwd=p&pwd=q&private_key=pk",
         f"client_secret={R}&sessionid={R}&passwd={R}&pwd={R}&private_key={R}"),
        (f"token={R}", f"token={R}"),  # idempotent
        ('File "/srv/app/auth.py", line 3, in login', 'File "/srv/app/auth.py", line 3, in login'),
        ("order 42 failed: card declined", "order 42 failed: card declined"),
    ],
)  # fmt: skip
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_the_documented_list_is_sensitive() -> None:
    names = ["api_key", "apikey", "token", "access_token", "secret", "password", "passwd",
             "pwd", "private_key", "authorization", "cookie", "set-cookie", "session",
             "sessionid", "x-api-key", "client_secret", "X-Auth-Token", "PRIVATE-KEY"]  # fmt: skip
    assert [n for n in names if not is_sensitive(n)] == []
    assert [n for n in ["user", "card", "order_id", "page", "accept"] if is_sensitive(n)] == []


@pytest.fixture
def restore_keys() -> Iterator[None]:
    words, patterns = redact._words, redact._text_patterns
    yield
    redact._words, redact._text_patterns = words, patterns
    redact.is_sensitive.cache_clear()


def test_add_sensitive_keys_extends_text_and_arguments(restore_keys: None) -> None:
    assert scrub("ssn=123-45") == "ssn=123-45"
    tasklens.add_sensitive_keys("ssn", "IBAN")
    assert scrub("ssn=123-45 iban: DE89") == f"ssn={R} iban: {R}"
    assert describe_args((), {"customer_iban": "DE89"}).kwargs == {"customer_iban": R}
    with pytest.raises(ValueError, match="add_sensitive_keys: expected non-empty strings, got ''"):
        tasklens.add_sensitive_keys("")


def test_header_containers_urls_and_keys_are_redacted() -> None:
    headers = Headers({"authorization": "Bearer h1", "accept": "*/*"})
    mutable = MutableHeaders(raw=[(b"cookie", b"sid=m1"), (b"accept", b"*/*")])
    scope = {"type": "http", "headers": [(b"x-api-key", b"k1"), (b"host", b"a")],
             "query_string": b"token=q1&page=2"}  # fmt: skip
    described = describe_args(
        (headers, mutable, [("Authorization", "Bearer p1")], [(b"authorization", b"b1")], scope,
         "postgresql://app:pw1@db/x", URL("https://u:pw2@h/p?api_key=k2")),
        {"settings": {"pwd": "p3", "private_key": "pk", "region": "eu"}},
    )  # fmt: skip
    assert described.args == [
        f"Headers({{'authorization': '{R}', 'accept': '*/*'}})",
        f"MutableHeaders({{'cookie': '{R}', 'accept': '*/*'}})",
        f"[('Authorization', '{R}')]",
        f"[(b'authorization', '{R}')]",
        f"{{'type': 'http', 'headers': [(b'x-api-key', '{R}'), (b'host', b'a')], "
        f"'query_string': b'token={R}&page=2'}}",
        f"'postgresql://app:{R}@db/x'",
        f"URL('https://u:{R}@h/p?api_key={R}')",
    ]
    assert described.kwargs == {
        "settings": f"{{'pwd': '{R}', 'private_key': '{R}', 'region': 'eu'}}"
    }
    assert described.fallbacks == 0


class Ghost:
    """An ORM object after its session closed: repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("DetachedInstanceError")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_unrepresentable_values_fall_back_and_are_counted() -> None:
    described = describe_args((Ghost(), 1), {"row": Ghost()})
    assert described.args == ["<unrepresentable Ghost>", "1"]
    assert described.kwargs == {"row": "<unrepresentable Ghost>"}
    assert described.fallbacks == 2
    try:
        raise Unprintable
    except Unprintable as exc:
        failure = describe_failure(exc)
    assert failure.type == f"{__name__}.Unprintable"
    assert failure.message == f"<unrepresentable {__name__}.Unprintable>"
    assert failure.fallbacks == 1
    assert failure.stacktrace.startswith("Traceback (most recent call last):\n  File ")
    assert failure.stacktrace.endswith(
        f"{__name__}.Unprintable: <unrepresentable {__name__}.Unprintable>\n"
    )


def test_chained_exceptions_keep_the_stdlib_layout() -> None:
    try:
        try:
            raise KeyError("token=t1")
        except KeyError as inner:
            raise ValueError("postgresql://a:pw@db") from inner
    except ValueError as exc:
        failure = describe_failure(exc)
    text = failure.stacktrace
    assert "t1" not in text and ":pw@" not in text
    assert (
        text.index(f"KeyError: 'token={R}'")
        < text.index("direct cause")
        < text.index(f"ValueError: postgresql://a:{R}@db")
    )
    assert failure.message == f"postgresql://a:{R}@db" and failure.fallbacks == 0


_opened: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and isinstance(args[0], str) and args[0].endswith("_tl_source_probe.py"):
        _opened.append(args[0])


sys.addaudithook(_audit)


def _failing_module(tmp_path: Path) -> Any:
    path = tmp_path / "_tl_source_probe.py"
    path.write_text("def fail():\n    raise ValueError('from the probe')\n")
    spec = importlib.util.spec_from_file_location("_tl_source_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_of(module: Any) -> BaseException:
    try:
        module.fail()
    except ValueError as exc:
        return exc
    raise AssertionError("no error")


def test_no_source_file_read_on_the_event_loop(tmp_path: Path) -> None:
    exc = _error_of(_failing_module(tmp_path))
    path = str(tmp_path / "_tl_source_probe.py")

    async def on_loop() -> str:
        return describe_failure(exc).stacktrace

    linecache.clearcache()
    _opened.clear()
    on_loop_text = asyncio.run(on_loop())
    assert _opened == []
    assert f'File "{path}", line 2, in fail\nValueError: from the probe' in on_loop_text

    # The stdlib would have read it (what the span SDK and structlog do by default).
    linecache.clearcache()
    traceback.format_exception(exc)
    assert _opened == [path]

    # Off the loop (a sync task's thread) source lines are read, and then cached for the loop.
    linecache.clearcache()
    _opened.clear()
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(describe_failure(exc).stacktrace))
    thread.start()
    thread.join(10)
    assert _opened == [path]
    assert "line 2, in fail\n    raise ValueError('from the probe')\n" in result[0]
    _opened.clear()
    assert "    raise ValueError('from the probe')\n" in asyncio.run(on_loop())
    assert _opened == []


def test_a_failing_traceback_formatter_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> list[str]:
        raise RecursionError("formatter failed")

    monkeypatch.setattr(redact, "_frames", broken)
    try:
        raise ValueError("token=t9")
    except ValueError as exc:
        failure = describe_failure(exc)
    assert failure.message == f"token={R}"
    assert failure.stacktrace == "<unrepresentable traceback of ValueError>\n"
    assert failure.fallbacks == 1


def test_a_bearer_token_standing_alone_is_scrubbed() -> None:
    from tasklens.telemetry.redact import scrub

    text = "upstream refused: sent Bearer eyJhbGciOi.eyJzdWIi.SflKxwRJSM= to billing"
    assert scrub(text) == "upstream refused: sent Bearer [redacted] to billing"
    assert scrub("authorization: Bearer abc.def") == "authorization: [redacted]"
    assert scrub("the bearer of bad news") == "the bearer of bad news"  # prose stays
