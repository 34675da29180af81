"""`zgate ctl`'s printing: aligned tables, cells, times, problem documents, time arguments."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from zgate_cli.ctl.errors import ApiError, render_problem
from zgate_cli.ctl.output import cell, print_json, render_table, when
from zgate_cli.ctl.times import parse_time, rfc3339


def test_table_aligns_columns_without_trailing_spaces() -> None:
    items = [{"id": "alice", "n": 3, "c": "x"}, {"id": "a-much-longer-id", "n": 12, "c": None}]
    text = render_table(
        items,
        [
            ("ID", lambda i: cell(i["id"])),
            ("N", lambda i: cell(i["n"])),
            ("C", lambda i: cell(i["c"])),
        ],
    )
    assert text.splitlines() == [
        "ID                N   C",
        "alice             3   x",
        "a-much-longer-id  12  -",
    ]
    assert not any(line.endswith(" ") for line in text.splitlines())


def test_table_with_an_empty_last_column_has_no_trailing_spaces() -> None:
    text = render_table([{"a": "x"}], [("A", lambda i: i["a"]), ("B", lambda i: "")])
    assert text.splitlines() == ["A  B", "x"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        ("", "-"),
        ([], "-"),
        (True, "yes"),
        (False, "no"),
        (["eng", "ops"], "eng,ops"),
        (0, "0"),
        ("evil\x1b[2Jname\n", "evil?[2Jname?"),
    ],
)
def test_cell(value: object, text: str) -> None:
    assert cell(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("2026-12-04T23:15:04.123456Z", "2026-12-04 23:15:04Z"),
        ("2026-12-05T01:15:04+02:00", "2026-12-04 23:15:04Z"),
        ("2026-12-04T23:15:04", "2026-12-04 23:15:04Z"),
        (None, "-"),
        ("", "-"),
        ("yesterday", "yesterday"),
        (5, "-"),
    ],
)
def test_when(value: object, text: str) -> None:
    assert when(value) == text


def test_print_json_is_the_data_indented() -> None:
    out = io.StringIO()
    print_json({"items": [{"id": "é"}], "next_cursor": None}, out)
    assert json.loads(out.getvalue()) == {"items": [{"id": "é"}], "next_cursor": None}
    assert "é" in out.getvalue()


def test_problem_with_policy_errors_at_line_and_column() -> None:
    problem = {
        "title": "Invalid request",
        "detail": "the policy is invalid (2 problems)",
        "errors": [
            {"line": 3, "column": 7, "message": "rules[0].action: must be allow or deny"},
            {"line": 9, "column": 0, "message": "no column"},
        ],
        "tests": [{"name": "tests[0]", "passed": False, "description": "hidden: errors given"}],
    }
    assert render_problem(problem, 422, "p.yaml") == [
        "Invalid request: the policy is invalid (2 problems)",
        "  p.yaml:3:7: rules[0].action: must be allow or deny",
        "  p.yaml:9: no column",
    ]
    assert render_problem(problem, 422)[1] == "  3:7: rules[0].action: must be allow or deny"


def test_problem_with_field_errors_and_failed_tests() -> None:
    validation = {
        "title": "Invalid request",
        "detail": "x",
        "errors": [{"field": "days", "message": "too big"}, "odd"],
    }
    assert render_problem(validation, 422, "ignored.yaml")[1:] == ["  days: too big", "  odd"]
    tests = {
        "title": "Invalid request",
        "tests": [
            {"name": "tests[0]", "passed": True, "description": "fine"},
            {"name": "tests[1]", "passed": False, "description": "alice -> x: deny"},
            {"line": 4, "column": 5, "passed": False, "other": 1},
            "weird",
        ],
    }
    assert render_problem(tests, 422) == [
        "Invalid request",
        "  FAIL tests[1]: alice -> x: deny",
        "  4:5: FAIL passed=False, other=1",
        "  test: weird",
    ]
    assert render_problem({}, 500) == ["HTTP 500"]


def test_api_error_message_and_source() -> None:
    error = ApiError(401, {"title": "Not authenticated", "detail": "bad token"}, hint="check it")
    assert str(error) == "Not authenticated: bad token\ncheck it"
    assert error.exit_code == 1
    about = ApiError(422, {"title": "T", "errors": [{"line": 1, "column": 2, "message": "m"}]})
    assert str(about.about("f.yaml")) == "T\n  f.yaml:1:2: m"


def test_times() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("1w", now=now) == now - timedelta(weeks=1)
    assert parse_time("30s", now=now) == now - timedelta(seconds=30)
    assert parse_time("2026-12-01T08:00Z") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("5m").tzinfo is not None
    with pytest.raises(argparse.ArgumentTypeError, match="not a time: 'soon'"):
        parse_time("soon")
    assert rfc3339(None) is None
    assert rfc3339(now) == "2026-12-04T12:00:00+00:00"
