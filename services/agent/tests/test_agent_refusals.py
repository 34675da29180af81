"""What the agent says when the relay refuses a session for its limits (503, 429)."""

from __future__ import annotations

from zgate_agent.failures import describe_refusal


def test_a_full_relay_is_said_in_words() -> None:
    line = describe_refusal(503, "the relay refused the CONNECT-IP request: proxy answered 503")
    assert line.startswith("the relay is full")
    assert "--max-sessions" in line and "retrying" in line


def test_the_per_client_limit_names_the_certificate_and_the_setting() -> None:
    line = describe_refusal(429, "proxy answered 429")
    assert "this certificate (429)" in line
    assert "--max-sessions-per-client" in line


def test_other_statuses_keep_the_session_cores_words() -> None:
    reason = "the relay refused the CONNECT-IP request: proxy answered 403"
    assert describe_refusal(403, reason) == reason
