"""`zgate-agent why proto://host:port`: why the relay refuses (or allows) a destination for
this agent.

Three hops, each with one job:

- the CLI (:func:`show_why`) asks the running daemon's local endpoint,
  ``GET http://127.0.0.1:9102/why?target=...``, and prints the answer;
- the daemon's endpoint (:func:`why_query`, run in the HTTP thread) hands the question to
  the event loop, where :meth:`Agent.ask_relay` sends it to the relay;
- the relay answers ``GET /.well-known/zgate/why?target=...`` on the agent's own QUIC
  connection, for the identity of the agent's client certificate only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from zgate_agent.app import Agent, RelayQueryError
from zgate_host.httpd import Query
from zgate_host.settings import parse_hostport

__all__ = ["LOCAL_PATH", "WHY_PATH", "describe_why", "relay_path", "show_why", "why_query"]

#: Where the relay answers.
WHY_PATH = "/.well-known/zgate/why"
#: Where the daemon's local endpoint answers.
LOCAL_PATH = "/why"

#: Exit codes of `zgate-agent why`.
EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2


def relay_path(target: str) -> str:
    """The relay's path for a question about ``target`` (percent-encoded whole)."""
    return f"{WHY_PATH}?target={quote(target, safe='')}"


def why_query(agent: Agent, loop: asyncio.AbstractEventLoop, *, timeout: float = 5.0) -> Query:
    """The daemon's ``GET /why?target=...``: the relay's answer as it came (its status and
    JSON), or 503 with ``error`` when it could not be asked (no tunnel, no answer)."""

    def handle(params: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        targets = params.get("target", [])
        if len(targets) != 1:
            return 400, {"error": "give one target: /why?target=tcp://HOST:PORT"}
        asked = agent.ask_relay("GET", relay_path(targets[0]), timeout=timeout)
        future = asyncio.run_coroutine_threadsafe(asked, loop)
        try:
            response = future.result(timeout + 1.0)
        except RelayQueryError as exc:
            return 503, {"error": str(exc)}
        except concurrent.futures.TimeoutError:  # the loop itself is stuck or stopping
            future.cancel()
            return 503, {"error": f"the agent did not answer within {timeout:g} s"}
        try:
            answer = json.loads(response.body)
        except ValueError:
            return 502, {"error": f"the relay's answer ({response.status}) is not JSON"}
        if not isinstance(answer, dict):
            return 502, {"error": f"the relay's answer ({response.status}) is not a JSON object"}
        return response.status, answer

    return handle


def describe_why(answer: Mapping[str, Any]) -> list[str]:
    """The relay's answer for a person: the verdict line, the explanation, the denials."""
    rule = answer.get("rule")
    version = answer.get("policy_version")
    if rule is None:
        by = "(access control is off on this relay)"
    else:
        by = "by the default" if rule == "default" else f"by rule {rule}"
        by += f" (policy {version})" if version else ""
    lines = [f"{answer.get('target')}: {answer.get('verdict')} {by}"]
    lines += [f"  {line}" for line in answer.get("explanation") or []]
    denials = answer.get("recent_denials") or []
    lines.append(f"recent denials of this agent there: {len(denials) or 'none'}")
    for d in denials:
        port = f":{d['dport']}" if d.get("dport") is not None else ""
        name = f" ({d['fqdn']})" if d.get("fqdn") else ""
        lines.append(f"  {d['ts']}  {d['proto']} {d['dst']}{port}{name}  by {d['rule']}")
    return lines


def target_problem(target: str) -> str | None:
    """What is wrong with ``target`` at a glance (the relay checks the rest), or None: a typo
    is said here, not as "nothing answers" when no agent runs."""
    scheme, separator, rest = target.partition("://")
    if separator and scheme.lower() in ("tcp", "udp", "icmp") and rest.strip("/"):
        return None
    return f"{target!r} is not a destination: write tcp://HOST:PORT, udp://HOST:PORT or icmp://HOST"


def show_why(address: str, target: str, *, as_json: bool, default_port: int = 9102) -> int:
    """Ask the running agent at ``address`` (its metrics/status endpoint) why ``target`` is
    refused or allowed; print the answer. Exit 0 allowed, 1 denied, 2 no answer."""
    if (problem := target_problem(target)) is not None:
        print(f"zgate-agent: {problem}", file=sys.stderr)
        return EXIT_ERROR
    host, port = parse_hostport(address, default_port)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}{LOCAL_PATH}?target={quote(target, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, answer = response.status, json.load(response)
    except urllib.error.HTTPError as exc:  # the agent's or the relay's refusal, as JSON
        status = exc.code
        try:
            answer = json.load(exc)
        except ValueError:
            answer = {"error": exc.reason}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"zgate-agent: nothing answers at {url} ({exc}); is `zgate-agent up` running "
            "(with --metrics at that address)?",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if status != 200:
        problem = answer.get("detail") or answer.get("error") or f"status {status}"
        print(f"zgate-agent: why {target}: {problem}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(answer, indent=2) if as_json else "\n".join(describe_why(answer)))
    return EXIT_ALLOW if answer.get("verdict") == "allow" else EXIT_DENY
