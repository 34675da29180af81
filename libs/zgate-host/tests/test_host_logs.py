"""JSON-lines and human logs, bound fields, and robustness against odd extras."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_host import InvalidArgument, bind, configure_logging
from zgate_host.logs import JsonFormatter


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logs go to a buffer; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class Unserializable:
    def __str__(self) -> str:
        return "<unserializable thing>"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_json_lines_carry_base_fields_and_extras(stream: io.StringIO) -> None:
    configure_logging("relay", stream=stream)
    logging.getLogger("zgate.test").info(
        "session %s opened",
        "s1",
        extra={"client_id": "alice", "packets": 3, "obj": Unserializable()},
    )
    (line,) = _lines(stream)
    assert line["msg"] == "session s1 opened"
    assert (line["level"], line["service"], line["logger"]) == ("info", "relay", "zgate.test")
    assert (line["client_id"], line["packets"], line["obj"]) == (
        "alice",
        3,
        "<unserializable thing>",
    )
    assert line["ts"].endswith("Z")
    assert datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).utcoffset() == timedelta(0)


def test_exceptions_and_awkward_values_never_break_a_line(stream: io.StringIO) -> None:
    configure_logging("agent", stream=stream)
    log = logging.getLogger("zgate.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"keys": {(1, 2): "tuple key"}, "bad": Unprintable()})
    cyclic: list[object] = []
    cyclic.append(cyclic)
    log.warning("cycle", extra={"cyclic": cyclic, "service": "spoofed"})
    first, second = _lines(stream)
    assert "ValueError: boom" in first["exc"]
    assert first["keys"] == "{(1, 2): 'tuple key'}"
    assert first["bad"] == "<unprintable Unprintable>"
    assert second["cyclic"] == "[[...]]"
    assert (second["service"], second["extra_service"]) == ("agent", "spoofed")


def test_level_filters_and_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("relay", level="warning", stream=io.StringIO())
    configure_logging("relay", level="WARNING", stream=stream)
    log = logging.getLogger("zgate.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["msg"] for line in _lines(stream)] == ["shown"]


def test_bad_level_is_refused(stream: io.StringIO) -> None:
    with pytest.raises(InvalidArgument, match="verbose"):
        configure_logging("relay", level="verbose", stream=stream)


def test_human_format(stream: io.StringIO) -> None:
    configure_logging("agent", json=False, stream=stream)
    logging.getLogger("zgate.test").info("connected", extra={"relay": "198.51.100.1:443"})
    text = stream.getvalue()
    assert "INFO" in text and "agent zgate.test: connected relay=198.51.100.1:443" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_bind_adds_fixed_fields_and_call_extras_win(stream: io.StringIO) -> None:
    configure_logging("relay", stream=stream)
    session = bind(logging.getLogger("zgate.session"), session_id="s9", client_id="alice")
    session.info("opened")
    session.info("moved", extra={"client_id": "bob", "mode": "stream"})
    nested = bind(session, flow=7)
    nested.info("flow")
    assert session.bind(extra=1).extra == {"session_id": "s9", "client_id": "alice", "extra": 1}
    opened, moved, flow = _lines(stream)
    assert (opened["session_id"], opened["client_id"]) == ("s9", "alice")
    assert (moved["client_id"], moved["mode"], moved["session_id"]) == ("bob", "stream", "s9")
    assert (flow["session_id"], flow["flow"], flow["logger"]) == ("s9", 7, "zgate.session")


_extra_keys = st.text(min_size=1, max_size=10).filter(
    lambda k: (
        k not in logging.LogRecord("", 0, "", 0, "", None, None).__dict__
        and k not in {"message", "asctime", "taskName"}
    )
)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.builds(Unserializable),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


@given(extras=st.dictionaries(_extra_keys, _values, max_size=5), msg=st.text())
def test_any_extras_give_one_valid_json_line(extras: dict[str, Any], msg: str) -> None:
    record = logging.LogRecord("zgate.prop", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extras)
    out = JsonFormatter("relay").format(record)
    assert "\n" not in out
    doc = json.loads(out, parse_constant=_refuse)
    assert doc["msg"] == msg
    for key in extras:
        if not key.startswith("_"):
            assert key in doc or f"extra_{key}" in doc


def test_aioquic_warnings_are_demoted_to_debug(stream: io.StringIO) -> None:
    # aioquic logs each refused handshake at warning beside the relay's own line: at the
    # info level nothing of it shows; at debug it shows, as debug.
    quic = logging.getLogger("quic")
    configure_logging("svc", level="info", stream=stream)
    quic.warning("[abc] Error: 300, reason: certificate revoked")
    quic.info("Negotiated protocol version")
    assert stream.getvalue() == ""
    configure_logging("svc", level="debug", stream=stream)
    quic.warning("[abc] Error: 300, reason: certificate revoked")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["logger"]) for r in records] == [("debug", "quic")]
    configure_logging("svc", level="debug", stream=stream)
    assert len([f for f in quic.filters if type(f).__name__ == "_DemoteToDebug"]) == 1


def test_http_client_requests_show_only_at_debug(stream: io.StringIO) -> None:
    # A relay following a control plane makes a request every few seconds: httpx's line per
    # request is noise at info, detail at debug; its warnings still show.
    httpx_log = logging.getLogger("httpx")
    configure_logging("svc", level="info", stream=stream)
    httpx_log.info("HTTP Request: POST http://control/api/v1/relays/r1/heartbeat 200")
    assert stream.getvalue() == ""
    httpx_log.warning("something odd")
    assert json.loads(stream.getvalue())["msg"] == "something odd"
    configure_logging("svc", level="debug", stream=stream)
    httpx_log.info("HTTP Request: GET http://control/api/v1/relays/r1/changes 200")
    assert "HTTP Request: GET" in stream.getvalue()


def test_without_a_stream_records_follow_the_current_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging("svc", level="info")
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("zgate.test").info("where")
    assert first.getvalue() == "" and json.loads(second.getvalue())["msg"] == "where"
