"""`zgate pki ...` driven through main([...]): files, modes, SANs, CRL, exit codes, messages."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from zgate_cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "pki"
    code, _, err = run(capsys, "pki", "init", "--dir", str(directory))
    assert (code, err) == (0, "")
    return directory


def test_init_creates_ca_relay_and_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    code, out, err = run(
        capsys,
        "pki",
        "init",
        "--dir",
        str(directory),
        "--trust-domain",
        "Corp.Example",
        "--relay-name",
        "relay.corp.example",
        "--relay-name",
        "localhost",
        "--relay-ip",
        "203.0.113.10",
    )
    assert (code, err) == (0, "")
    assert "corp.example" in out
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "relay.key") == 0o600
    relay = load_cert(directory / "relay.pem")
    san = relay.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.corp.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.10"]
    assert len(x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())) == 0


def test_init_defaults(pki_dir: Path) -> None:
    san = load_cert(pki_dir / "relay.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_dir_defaults_to_dot_zgate_pki(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "pki", "init")[0] == 0
    assert run(capsys, "pki", "issue", "client", "alice")[0] == 0
    assert (tmp_path / ".zgate" / "pki" / "ca.pem").is_file()
    assert (tmp_path / ".zgate" / "pki" / "clients" / "alice.pem").is_file()


def test_init_refuses_to_overwrite_without_force(
    pki_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (pki_dir / "ca.pem").read_bytes()
    code, _, err = run(capsys, "pki", "init", "--dir", str(pki_dir))
    assert code == 2
    assert err.startswith("zgate pki: error: a CA already exists")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert (pki_dir / "ca.pem").read_bytes() == before

    assert run(capsys, "pki", "init", "--dir", str(pki_dir), "--force")[0] == 0
    assert (pki_dir / "ca.pem").read_bytes() != before


def test_issue_client_with_groups(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "pki",
        "issue",
        "client",
        "alice",
        "--dir",
        str(pki_dir),
        "--group",
        "eng",
        "--group",
        "ops",
    )
    assert (code, err) == (0, "")
    assert "client/alice" in out
    key = pki_dir / "clients" / "alice.key"
    assert mode(key) == 0o600
    cert = load_cert(pki_dir / "clients" / "alice.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zgate.local/client/alice"
    ]
    units = cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [u.value for u in units] == ["eng", "ops"]


def test_issue_connector(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pki", "issue", "connector", "site-a", "--dir", str(pki_dir))[0] == 0
    assert mode(pki_dir / "connectors" / "site-a.key") == 0o600
    cert = load_cert(pki_dir / "connectors" / "site-a.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zgate.local/connector/site-a"
    ]


def test_revoke_writes_the_serial_into_the_crl(
    pki_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "pki", "issue", "client", "alice", "--dir", str(pki_dir))
    serial = load_cert(pki_dir / "clients" / "alice.pem").serial_number
    code, out, err = run(capsys, "pki", "revoke", "alice", "--dir", str(pki_dir))
    assert (code, err) == (0, "")
    assert f"{serial:x}" in out
    crl = x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None

    code, _, err = run(capsys, "pki", "revoke", "alice", "--dir", str(pki_dir))
    assert code == 2
    assert err == "zgate pki: error: alice is already revoked\n"


def test_revoke_with_kind_and_reason(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "pki", "issue", "connector", "site-a", "--dir", str(pki_dir))
    code, _, _ = run(
        capsys,
        "pki",
        "revoke",
        "site-a",
        "--dir",
        str(pki_dir),
        "--kind",
        "connector",
        "--reason",
        "key-compromise",
    )
    assert code == 0
    entry = next(iter(x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())))
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise


def test_list_is_a_table(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pki", "list", "--dir", str(pki_dir))
    assert code == 0
    assert "No client or connector certificates" in out

    run(capsys, "pki", "issue", "client", "alice", "--dir", str(pki_dir), "--group", "eng")
    run(capsys, "pki", "issue", "connector", "site-a", "--dir", str(pki_dir))
    run(capsys, "pki", "revoke", "alice", "--dir", str(pki_dir))
    code, out, _ = run(capsys, "pki", "list", "--dir", str(pki_dir))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["KIND", "ID", "GROUPS", "NOT", "AFTER", "STATUS", "SERIAL"]
    assert [row.split()[:3] + row.split()[4:5] for row in rows] == [
        ["client", "alice", "eng", "revoked"],
        ["connector", "site-a", "-", "active"],
    ]
    # columns line up
    assert rows[0].index("alice") == rows[1].index("site-a") == header.index("ID")


@pytest.mark.parametrize(
    "argv",
    [
        ["pki"],
        ["pki", "issue"],
        ["pki", "issue", "client"],
        ["pki", "issue", "client", "bad/id"],
        ["pki", "issue", "client", "alice", "--group", "a b"],
        ["pki", "issue", "connector", "site-a", "--group", "eng"],
        ["pki", "issue", "client", "alice", "--days", "0"],
        ["pki", "revoke", "alice", "--kind", "robot"],
        ["pki", "frobnicate"],
        ["pki", "init", "--relay-ip", "999.1.1.1"],
        ["pki", "init", "--relay-name", "under_score"],
        ["pki", "init", "--trust-domain", "a b"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "error:" in err
    assert "Traceback" not in err


def test_failures_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["pki", "issue", "client", "alice", "--dir", str(tmp_path)],
        ["pki", "list", "--dir", str(tmp_path / "nowhere")],
        ["pki", "revoke", "nobody", "--dir", str(tmp_path)],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("zgate pki: error: ")
        assert err.count("\n") == 1


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pki", "--help")
    assert code == 0
    for command in ("init", "issue", "revoke", "list"):
        assert command in out
    code, out, _ = run(capsys, "pki", "issue", "client", "--help")
    assert code == 0
    assert "--group" in out
    assert "./.zgate/pki" in out
