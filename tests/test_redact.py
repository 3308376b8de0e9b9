"""Tests for wslogging._redact: RedactingFilter on records, and through dictConfig end to end."""

from __future__ import annotations

import copy
import logging
import logging.config
import re
import time
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, connect, dict_config, live_handler, receive_logs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wslogging
from wslogging import RedactingFilter


def make_record(msg: object = "hello", args: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def redact(record: logging.LogRecord, **options: Any) -> logging.LogRecord:
    return RedactingFilter(**options).filter(record)


# -- fields --------------------------------------------------------------------------------------


def test_named_fields_are_masked_at_any_depth() -> None:
    """Extras whose names contain a secret name are masked, whatever their case or dashes,
    in nested dicts and lists too; other values are kept."""
    record = make_record(
        user="bob",
        Password="hunter2",
        request={"headers": {"Authorization": "Bearer abc"}, "items": [{"api-key": "k", "n": 1}]},
        db_passwd=("x",),
    )
    out = redact(record).__dict__
    assert ("bob", "***", "***") == (out["user"], out["Password"], out["db_passwd"])
    assert {"headers": {"Authorization": "***"}, "items": [{"api-key": "***", "n": 1}]} == out[
        "request"
    ]


def test_mapping_arguments_are_masked_by_name() -> None:
    """%(name)s arguments named like a secret are masked before the message is formatted."""
    record = make_record("%(user)s logs in with %(password)s", {"user": "bob", "password": "pw"})
    assert "bob logs in with ***" == redact(record).getMessage()


def test_fields_can_be_chosen_and_mask_set() -> None:
    """fields replaces the default names (one string is one name); mask is what is written."""
    record = make_record(pin="1234", password="kept")
    out = redact(record, fields="PIN", mask="[gone]").__dict__
    assert ("[gone]", "kept") == (out["pin"], out["password"])


# -- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter2 ok", "login password=*** ok"),
        ("token: abc, next", "token: ***, next"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "***", "user": "bob"}'),
        ("{'api_key': 'k-1'}", "{'api_key': '***'}"),
        ("Authorization: Bearer xyz.abc", "Authorization: Bearer ***"),
        ("GET /x?access_token=s3cr3t&since=4", "GET /x?access_token=***&since=4"),
        ("nothing secret here", "nothing secret here"),
        ('{"password": "pw with spaces", "n": 1}', '{"password": "***", "n": 1}'),
        ("{'secret': 'it\\'s long', 'n': 1}", "{'secret': '***', 'n': 1}"),
        ('{"token": "a\\"b c"}', '{"token": "***"}'),
        ('"Authorization": "Bearer x y"', '"Authorization": "Bearer ***"'),
        ('password="never closed', 'password="*** closed'),
        ('password="" user=bob', 'password="" user=bob'),
    ],
)
def test_named_values_in_text_are_masked(text: str, expected: str) -> None:
    """In a message, a named field's value written name=value, name: value or as JSON or a
    dict repr is masked (a quoted one to its closing quote, spaces and all); an
    Authorization scheme is kept."""
    assert expected == redact(make_record(text)).getMessage()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("to postgres://admin:PASS@db/app", "to postgres://admin:***@db/app"),
        ("redis://:PASS@host:6379/0", "redis://:***@host:6379/0"),
        ("dsn='amqp://u:p@ss@mq'", "dsn='amqp://u:***@mq'"),
        ("ssh://git@github.com/x", "ssh://git@github.com/x"),
        ("http://api:8080/u?email=bob@x.com", "http://api:8080/u?email=bob@x.com"),
    ],
)
def test_url_passwords_are_masked(text: str, expected: str) -> None:
    """The password in a URL's user part is masked, whatever fields are; a user alone, a
    port and an @ after the host are not passwords."""
    assert expected == redact(make_record(text), fields=[]).getMessage()


def test_patterns_mask_their_match_or_their_groups() -> None:
    """A pattern without groups masks its whole match; one with groups only what they
    captured; compiled patterns work too."""
    record = make_record("card 4111-1111-1111-1111 key sk_live_abc123 done")
    out = redact(record, patterns=[r"\d{4}(?:-\d{4}){3}", re.compile(r"sk_live_(\w+)")])
    assert "card *** key sk_live_*** done" == out.getMessage()


def test_traceback_and_stack_are_masked() -> None:
    """The exception text (as exc_text, exc_info dropped) and the stack are masked."""
    try:
        raise RuntimeError("connect failed: password=hunter2")
    except RuntimeError as exc:
        record = make_record("failed")
        record.exc_info = (RuntimeError, exc, exc.__traceback__)
    record.stack_info = "Stack:\n  token=abc"
    out = redact(record)
    assert out.exc_text is not None
    assert ("RuntimeError: connect failed: password=***", None, "Stack:\n  token=***") == (
        out.exc_text.splitlines()[-1],
        out.exc_info,
        out.stack_info,
    )


def test_structlog_event_dict_stays_a_dict() -> None:
    """A structlog event dict in msg is masked by name and as text, and stays a dict."""
    record = make_record({"event": "login token=abc", "password": "pw", "user": "bob"})
    assert {"event": "login token=***", "password": "***", "user": "bob"} == redact(record).msg


# -- time ----------------------------------------------------------------------------------------

# What a request's sender can make an app log, in pieces: secret names, separators, quotes,
# schemes, URL parts, escapes, and characters of every class the filter tells apart.
_PIECES = [
    *("token", "secret_", "password", "Authorization", "api-key", "a", "é", "9"),
    *("-", ".", "_", "=", ":", " ", "\t", "\n", '"', "'", "\\", "&", ",", ";"),
    *("Bearer ", "basic ", "://", "@", "/", "?", "#"),
]
_UNITS = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("".join)
_SECRET = " password=S3CR3T "


def best_time(redactor: RedactingFilter, text: str, runs: int) -> float:
    """The shortest of ``runs`` redactions of a record logging ``text``, in seconds."""
    record = make_record(text)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        redactor.filter(record)
        times.append(time.perf_counter() - started)
    return min(times)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(prefix=st.lists(st.sampled_from(_PIECES), max_size=4).map("".join), unit=_UNITS)
def test_adversarial_10kb_is_redacted_fast_and_masked(prefix: str, unit: str) -> None:
    """Any piece pattern repeated to 10 KB, a secret in the middle, is redacted in well under
    100 ms (about 1 ms here), and the secret is masked whatever surrounds it."""
    half = unit * (5_000 // len(unit))
    text = prefix + half + _SECRET + half
    redactor = RedactingFilter()
    assert "S3CR3T" not in redactor.filter(make_record(text)).getMessage()
    assert best_time(redactor, text, 3) < 0.1


@pytest.mark.parametrize(
    ("prefix", "unit"),
    [
        ("GET /", "token"),
        ("", "secret_"),
        ("", "a"),
        ("", "="),
        ("password", "="),
        ("", "token: "),
        ("Authorization: ", "Bearer "),
        ("", '"password": "'),
        ('token="', '\\"'),
        ("", "password=x "),
        ("", "://u:p@"),
    ],
)
def test_time_grows_linearly(prefix: str, unit: str) -> None:
    """Doubling an adversarial message at most about doubles the time to redact it (a ratio
    above 3 fails: linear time gives about 2, quadratic 4). The size grows until one run
    takes 20 ms, so that timer noise does not count; each time is the best of 5 runs, the
    two sizes interleaved so that a busy spell of the machine slows both."""
    redactor = RedactingFilter()
    count = 1_000 // len(unit)
    while best_time(redactor, prefix + unit * count, 3) < 0.02 and count < 1 << 20:
        count *= 2
    small, large = prefix + unit * count, prefix + unit * (2 * count)
    times: dict[str, list[float]] = {small: [], large: []}
    for _ in range(5):
        for text in times:
            times[text].append(best_time(redactor, text, 1))
    assert min(times[large]) / min(times[small]) < 3


# -- the record given ------------------------------------------------------------------------


def test_the_record_given_is_not_changed() -> None:
    """filter() returns a copy: the app's record, and what it holds, are left as they were."""
    try:
        raise ValueError("password=hunter2")
    except ValueError as exc:
        record = make_record(
            "%s with token=abc", ("bob",), headers={"Authorization": "x"}, Password="pw"
        )
        record.exc_info = (ValueError, exc, exc.__traceback__)
    before = copy.deepcopy({k: v for k, v in record.__dict__.items() if k != "exc_info"})
    out = redact(record)
    assert out is not record
    assert before == {k: v for k, v in record.__dict__.items() if k != "exc_info"}
    assert record.exc_info is not None


def test_arguments_that_do_not_fit_keep_the_template() -> None:
    """A message whose arguments do not fit is streamed as its template, masked."""
    assert "token=*** %d" == redact(make_record("token=abc %d", ("x",))).getMessage()


def test_a_record_that_breaks_everything_is_masked_whole() -> None:
    """A record redaction cannot take apart is passed with its message masked."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    out = redact(make_record(Hostile(), extra_field="x"))
    assert ("***", False) == (out.getMessage(), hasattr(out, "extra_field"))


# -- end to end ----------------------------------------------------------------------------------


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def redacting_config(**filter_options: Any) -> dict[str, Any]:
    config = dict_config()
    config["filters"] = {"redact": {"()": "wslogging.RedactingFilter", **filter_options}}
    config["handlers"]["live"]["filters"] = ["redact"]
    return config


async def test_dict_config_redacts_what_is_streamed_only(session: aiohttp.ClientSession) -> None:
    """Configured through dictConfig on the handler, the filter masks message, fields and
    traceback of what is streamed, while the app's other handlers get the record as it was."""
    logging.config.dictConfig(
        redacting_config(fields=["password", "authorization"], patterns=[r"\d{16}"])
    )
    handler = live_handler()
    other = _Keep()
    logging.getLogger().addHandler(other)
    ws = await connect(session, handler)
    log = logging.getLogger("app.login")
    try:
        raise PermissionError("card 4111111111111111 refused")
    except PermissionError:
        log.exception(
            "login password=%s",
            "hunter2",
            extra={"request": {"headers": {"Authorization": "Bearer abc"}}, "user": "bob"},
        )
    (record,) = await receive_logs(ws, 1)
    assert (
        "login password=***",
        {"request": {"headers": {"Authorization": "***"}}, "user": "bob"},
    ) == (
        record["log"],
        record["fields"],
    )
    assert record["exc"].endswith("PermissionError: card *** refused")
    (kept,) = other.records
    assert ("login password=hunter2", {"Authorization": "Bearer abc"}) == (
        kept.getMessage(),
        kept.request["headers"],  # type: ignore[attr-defined]
    )
    async with session.get(f"{handler.url}/api/logs?since=0", headers=AUTH) as response:
        assert "hunter2" not in await response.text()
    await ws.close()


async def test_broadcasts_are_redacted_too(session: aiohttp.ClientSession) -> None:
    """A broadcast skips the handler's filters but not its redaction."""
    logging.config.dictConfig(redacting_config())
    handler = live_handler()
    ws = await connect(session, handler)
    wslogging.broadcast_log_sync("deploy with token=abc", token="abc", version="1.2")
    (record,) = await receive_logs(ws, 1)
    assert ("deploy with token=***", {"token": "***", "version": "1.2"}) == (
        record["log"],
        record["fields"],
    )
    await ws.close()
