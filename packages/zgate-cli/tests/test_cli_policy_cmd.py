"""`zgate policy ...` driven through main([...]): exit codes, outputs, error positions."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zgate_cli.main import main
from zgate_policy import load_and_compile

POLICY = textwrap.dedent(
    """
    default: deny
    groups:
      eng: [alice, bob]
    resources:
      corp-net:
        - 10.1.0.0/16
        - fqdn: "*.corp.example"
          ports: [tcp/443]
    rules:
      - id: deny-evil
        action: deny
        from: ["*"]
        to: [203.0.113.66/32]
      - id: eng-corp
        action: allow
        from: ["group:eng"]
        to: [corp-net]
        ports: [tcp/443, udp/5000-5100, icmp]
    tests:
      - {from: alice, to: "tcp://10.1.2.3:443", expect: allow}
      - {from: mallory, to: "udp://203.0.113.66:53", expect: deny}
      - {from: alice, to: "tcp://wiki.corp.example:443", expect: allow}
    """
).lstrip()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, POLICY)
    code, out, err = run(capsys, "policy", "check", str(path))
    assert (code, err) == (0, "")
    compiled = load_and_compile(path, geoip_available=False, now=datetime.now(UTC))
    assert out == f"{path}: OK: 2 rules, 3 tests passed, 0 warnings, version {compiled.version}\n"


def test_check_reports_errors_with_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = POLICY.replace('from: ["group:eng"]', 'from: ["group:engg"]').replace(
        "tcp/443, udp", "tcp/99999, udp"
    )
    path = write(tmp_path, text)
    code, out, err = run(capsys, "policy", "check", str(path))
    assert (code, out) == (1, "")
    # Shape errors first (the port); references are checked once the shapes are valid.
    line = line_of(text, "tcp/99999")
    assert err == (
        f"{path}:{line}:13: rules[1].ports[0]: 'tcp/99999': ports are numbers from 1 to 65535\n"
    )
    path = write(tmp_path, text.replace("tcp/99999", "tcp/443"))
    code, out, err = run(capsys, "policy", "check", str(path))
    line = line_of(text, '"group:engg"')
    assert (code, out) == (1, "")
    assert err == (
        f'{path}:{line}:12: rules[1].from[0]: unknown group "engg" (did you mean "eng"?)\n'
    )


def test_check_prints_lint_warnings_and_strict_fails_on_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = POLICY.replace(
        "tests:",
        "  - {id: late, action: allow, from: [alice], to: [10.1.2.0/24], ports: [tcp/443]}\ntests:",
    )
    path = write(tmp_path, text)
    code, out, err = run(capsys, "policy", "check", str(path))
    line = line_of(text, "- {id: late")
    assert code == 0
    assert err == (
        f'{path}:{line}:5: rules[2]: warning: rule late: can never match: rule "eng-corp"'
        " (rules[1]) matches all of its flows first (same action: redundant)\n"
    )
    assert ", 1 warnings," in out
    code, _, _ = run(capsys, "policy", "check", "--strict", str(path))
    assert code == 1


def test_check_fails_when_a_test_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POLICY.replace(
        '"udp://203.0.113.66:53", expect: deny', '"udp://203.0.113.66:53", expect: allow'
    )
    path = write(tmp_path, text)
    code, out, err = run(capsys, "policy", "check", str(path))
    assert code == 1
    assert out == f"{path}: 1 of 3 tests failed\n"
    line = line_of(text, "- {from: mallory")
    assert err == (
        f"{path}:{line}:5: tests[1]: FAIL mallory -> udp://203.0.113.66:53:"
        " deny by deny-evil (expected allow)\n"
    )


def test_check_needs_geoip_for_country_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, POLICY.replace("to: [corp-net]", "to: [corp-net, 'country:DE']"))
    code, _, err = run(capsys, "policy", "check", str(path))
    assert code == 1
    assert "GeoIP rules need a GeoIP database (--geoip FILE)" in err
    database = write(tmp_path, "not really a database", "geo.mmdb")
    code, _, err = run(capsys, "policy", "check", "--geoip", str(database), str(path))
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "policy", "check", "--geoip", str(tmp_path / "no.mmdb"), str(path))
    assert code == 1 and "no such GeoIP database" in err


def test_check_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "nope.yaml"))
    assert code == 1 and "cannot read the policy" in err


def test_test_prints_pass_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POLICY + '  - {from: bob, to: "tcp://10.1.2.3:22", expect: allow}\n'
    path = write(tmp_path, text)
    code, out, err = run(capsys, "policy", "test", str(path))
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == (
        f"PASS tests[0] (line {line_of(text, '- {from: alice')}): "
        "alice -> tcp://10.1.2.3:443: allow by eng-corp (expected allow)"
    )
    assert [line.split()[0] for line in lines[:4]] == ["PASS", "PASS", "PASS", "FAIL"]
    assert lines[3].endswith("bob -> tcp://10.1.2.3:22: deny by default (expected allow)")
    assert lines[4] == "3 passed, 1 failed"
    code, out, _ = run(capsys, "policy", "test", str(write(tmp_path, POLICY)))
    assert code == 0 and out.endswith("3 passed, 0 failed\n")


def test_test_respects_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        POLICY.replace(
            "    ports: [tcp/443, udp", "    expires: 2026-01-01\n    ports: [tcp/443, udp"
        ),
    )
    code, out, _ = run(capsys, "policy", "test", "--at", "2025-12-31T23:00:00Z", str(path))
    assert code == 0
    code, out, _ = run(capsys, "policy", "test", "--at", "2026-01-02", str(path))
    assert code == 1 and "1 passed, 2 failed" in out


def test_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, POLICY)
    code, out, err = run(
        capsys, "policy", "explain", str(path), "--from", "alice", "--to", "tcp://10.1.2.3:443"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "flow: alice -> tcp://10.1.2.3:443",
        "verdict: allow (rule eng-corp)",
        "principal: [alice, group:eng]",
        "  deny-evil (deny): no match: destination: 10.1.2.3 is not in [203.0.113.66/32]",
        "  eng-corp (allow): MATCH: from [group:eng], to corp-net: 10.1.0.0/16,"
        " ports icmp, tcp/443, udp/5000-5100",
    ]


def test_explain_with_groups_names_and_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, POLICY)
    argv = ["policy", "explain", str(path), "--from", "dave", "--group", "eng"]
    code, out, _ = run(capsys, *argv, "--to", "udp://wiki.corp.example:5000")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flow: dave -> udp://wiki.corp.example:5000 (wiki.corp.example)"
    assert lines[1] == "verdict: deny (the default)"
    assert lines[2] == "principal: [dave, group:eng]"
    assert lines[4] == (
        "  eng-corp (allow): no match: port: udp/5000 is not allowed"
        " (corp-net: *.corp.example: tcp/443)"
    )
    assert lines[-1] == "  default (deny): no rule matched"
    code, out, _ = run(capsys, *argv, "--to", "tcp://198.51.100.1:443", "--fqdn", "a.corp.example")
    assert "verdict: allow (rule eng-corp)" in out


def test_explain_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, POLICY)
    code, _, err = run(capsys, "policy", "explain", str(path), "--from", "a", "--to", "tcp://x")
    assert code == 2 and "needs a port" in err
    code, _, _ = run(capsys, "policy", "explain", str(path), "--to", "tcp://10.0.0.1:1")
    assert code == 2


GO = textwrap.dedent(
    """
    default_action: deny
    clients:
      alice:
        rules:
          - {action: allow, destination: 10.0.0.0/8}
          - {action: deny,  destination: 0.0.0.0/0}
    """
).lstrip()


def test_convert_go_to_stdout_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, GO, "go.yaml")
    code, out, err = run(capsys, "policy", "convert-go", str(source))
    assert (code, err) == (0, "")
    assert 'id: "go-alice-1"' in out
    target = tmp_path / "ours.yaml"
    code, out, err = run(capsys, "policy", "convert-go", str(source), "-o", str(target))
    assert (code, out) == (0, "")
    assert err == f"converted {source} -> {target}\n"
    compiled = load_and_compile(target, geoip_available=False, now=datetime.now(UTC))
    assert compiled.rule_ids == ("go-alice-1", "go-alice-2", "default")
    code, out, err = run(capsys, "policy", "check", str(target))
    assert code == 0 and err == ""


def test_convert_go_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, GO.replace("10.0.0.0/8", "10.0.0.0/88"), "go.yaml")
    code, out, err = run(capsys, "policy", "convert-go", str(source))
    assert (code, out) == (1, "")
    assert err.startswith(f"{source}:{line_of(GO, '10.0.0.0/8')}:")
    assert "invalid destination" in err
    code, _, err = run(capsys, "policy", "convert-go", str(tmp_path / "none.yaml"))
    assert code == 1 and "cannot read" in err
