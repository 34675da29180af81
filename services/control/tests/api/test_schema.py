"""The OpenAPI document is the contract: schemathesis generates requests for every operation
and checks that none gets a 5xx and that every answer matches the documented status codes,
content types and schemas (on both databases)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok

from zgate_control.app import create_app
from zgate_control.db import Database
from zgate_control.settings import ControlSettings

Auth = Callable[..., dict[str, str]]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 8


def test_every_operation_keeps_its_contract(
    database: Database, settings: ControlSettings, auth: Auth
) -> None:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", create_app(settings, database))
    headers = auth("admin")
    failures: list[str] = []
    results = list(schema.get_all_operations())
    invalid = [str(result.err()) for result in results if isinstance(result, Err)]
    assert not invalid, invalid
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 30

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            if case.path.endswith("/changes"):
                # a long poll would wait its full `wait`; its own tests cover waiting
                case.query = {**(case.query or {}), "wait": 0}
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            exercise()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
