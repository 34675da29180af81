"""`zgate-agent up` and `zgate-connector up` check their certificate files before anything
else: each mistake is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zgate_agent.cli import main as agent_main
from zgate_connector.cli import main as connector_main
from zgate_pki import init_pki, issue_certificate

Main = Callable[[list[str]], int]
MAINS: dict[str, tuple[Main, list[str]]] = {
    "zgate-agent": (agent_main, []),
    "zgate-connector": (connector_main, ["--site", "192.168.50.0/24"]),
}


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    init_pki(directory)
    issue_certificate(directory, "client", "alice")
    issue_certificate(directory, "client", "bob")
    return directory


def cert_valid(pki: Path, start: datetime, end: datetime, out: Path) -> Path:
    """Alice's certificate again (same key and names), valid from start to end."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    old = x509.load_pem_x509_certificate((pki / "clients" / "alice.pem").read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    out.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return out


@contextlib.contextmanager
def as_user(name: str) -> Iterator[None]:
    """Run the block with another effective uid (root can read any file)."""
    if os.geteuid() != 0:
        yield
        return
    uid = pwd.getpwnam(name).pw_uid
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def run(
    program: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str], user: str = ""
) -> str:
    """Run `program up` with these files; assert exit 2 and one line; return the line."""
    main, extra = MAINS[program]
    argv = ["up", "--metrics", "off", *extra]
    for flag, path in files.items():
        argv += [f"--{flag}", str(path)]
    with as_user(user) if user else contextlib.nullcontext():
        code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith(f"{program}: ")
    return lines[0]


def files_of(pki: Path, client: str = "alice") -> dict[str, Path]:
    return {
        "ca": pki / "ca.pem",
        "cert": pki / "clients" / f"{client}.pem",
        "key": pki / "clients" / f"{client}.key",
    }


@pytest.fixture(params=sorted(MAINS))
def program(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_missing_file(program: str, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = files_of(pki) | {"key": pki / "clients" / "nobody.key"}
    line = run(program, files, capsys)
    assert f"--key {pki / 'clients' / 'nobody.key'} does not exist" in line


def test_unreadable_key_names_the_file_mode_and_owner(
    program: str,
    pki: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    skip_or_fail: Callable[[str], NoReturn],
) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        skip_or_fail("no user 'nobody' to read the file as")
    # A directory every user may enter, holding a key only root may read.
    shared = Path(f"/tmp/zgate-agent-test-{os.getpid()}")
    shared.mkdir(mode=0o755, exist_ok=True)
    try:
        files = {}
        for name, path in files_of(pki).items():
            files[name] = shared / path.name
            shutil.copy(path, files[name])
            files[name].chmod(0o644)
        files["key"].chmod(0o600)
        if os.geteuid() != 0:
            files["key"].chmod(0)
        line = run(program, files, capsys, user="nobody")
    finally:
        shutil.rmtree(shared)
    assert f"--key {shared / 'alice.key'}" in line
    assert "permission denied" in line
    if os.geteuid() == 0:
        assert "mode 0600, owner root" in line
        assert "nobody" in line


def test_ca_that_is_a_private_key(
    program: str, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run(program, files_of(pki) | {"ca": pki / "ca.key"}, capsys)
    assert f"--ca {pki / 'ca.key'}" in line
    assert "private key, not a certificate" in line


def test_ca_that_is_not_a_certificate(
    program: str, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run(program, files_of(pki) | {"ca": pki / "index.json"}, capsys)
    assert f"--ca {pki / 'index.json'}" in line
    assert "not a PEM certificate" in line


def test_malformed_pem(
    program: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.pem"
    text = (pki / "clients" / "alice.pem").read_text()
    broken.write_text(text.replace(text.splitlines()[3], "not base64 at all!"))
    line = run(program, files_of(pki) | {"cert": broken}, capsys)
    assert f"--cert {broken}" in line
    assert "not a valid PEM certificate" in line


def test_key_of_another_certificate(
    program: str, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run(program, files_of(pki) | {"key": pki / "clients" / "bob.key"}, capsys)
    assert f"--key {pki / 'clients' / 'bob.key'} does not belong to" in line
    assert f"--cert {pki / 'clients' / 'alice.pem'}" in line


def test_expired_certificate_says_when(
    program: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    end = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = cert_valid(pki, end - timedelta(days=30), end, tmp_path / "old.pem")
    line = run(program, files_of(pki) | {"cert": old}, capsys)
    assert f"--cert {old}" in line
    assert "expired on 2026-01-02 03:04:05 UTC" in line


def test_certificate_not_valid_yet_says_when(
    program: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    new = cert_valid(pki, start, start + timedelta(days=30), tmp_path / "new.pem")
    line = run(program, files_of(pki) | {"cert": new}, capsys)
    assert f"--cert {new}" in line
    assert f"not valid yet: from {start:%Y-%m-%d %H:%M:%S} UTC" in line
