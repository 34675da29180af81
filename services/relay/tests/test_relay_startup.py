"""The relay started as an operator starts it, from another directory, with the mistakes
people make: each ends with exit status 2 and one line that names the file, flag or address
and the fix, never a traceback; nothing is created where it should not be."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from zgate_host.state import default_state_dir, ensure_state_dir
from zgate_pki import PkiPaths, init_pki
from zgate_proto.engines import ENGINES as QUIC_ENGINES
from zgate_relay.settings import RelaySettings

SERVE = str(Path(sys.executable).parent / "serve")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
QUIET = ["--no-egress", "--metrics", "off", "--log-level", "error", "--listen", "127.0.0.1:0"]


def serve(
    *args: str | Path, cwd: Path, timeout: float = 60, engine: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `serve` to completion (it is expected to refuse to start), on QUIC ``engine``
    (as ZGATE_RELAY_QUIC_ENGINE) if given."""
    env = dict(os.environ)
    if engine is not None:
        env["ZGATE_RELAY_QUIC_ENGINE"] = engine
    return subprocess.run(
        [SERVE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 2, exactly one `zgate-relay: ...` line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zgate-relay: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory: nothing the relay does may depend on it."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture(params=QUIC_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Refusals about the relay's certificate and socket are the same on every engine."""
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_pki(tmp_path / "pki")


def copy_pki(pki: PkiPaths, to: Path) -> PkiPaths:
    shutil.copytree(pki.directory, to)
    return PkiPaths(to)


# ------------------------------------------------------------------- state directory


def test_default_state_dir_root_and_user() -> None:
    assert default_state_dir("relay", euid=0) == Path("/var/lib/zgate/relay")
    env = {"HOME": "/home/ann"}
    assert default_state_dir("relay", euid=1000, environ=env) == Path(
        "/home/ann/.local/state/zgate/relay"
    )
    env["XDG_STATE_HOME"] = "/srv/state"
    assert default_state_dir("agent", euid=1000, environ=env) == Path("/srv/state/zgate/agent")


def test_settings_place_defaults_in_the_state_dir(tmp_path: Path) -> None:
    settings = RelaySettings(state_dir=tmp_path / "st")
    assert settings.pki == tmp_path / "st" / "pki"
    assert settings.audit_log == tmp_path / "st" / "audit.log"
    assert not settings.pki_given
    given = RelaySettings(state_dir=tmp_path / "st", pki=Path("/etc/zgate/pki"), audit_log="off")
    assert given.pki == Path("/etc/zgate/pki") and given.pki_given
    assert given.audit_log is None


def test_ensure_state_dir_creates_private_dir_and_refuses_a_file(tmp_path: Path) -> None:
    made = ensure_state_dir(tmp_path / "a" / "b")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match=r"exists and is not a directory \(--state-dir\)"):
        ensure_state_dir(tmp_path / "file")


def test_no_flags_from_another_directory_keeps_everything_in_the_state_dir(
    tmp_path: Path, elsewhere: Path
) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [SERVE, "--state-dir", str(state), *QUIET[:-4], "--listen", "127.0.0.1:0"],
        cwd=elsewhere,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "relay ready" in line:
                break
        text = "".join(lines)
        assert "DEVELOPMENT PKI" in text and "relay ready" in text, text
        for name in ("ca.pem", "ca.key", "relay.pem", "relay.key", "crl.pem"):
            assert (state / "pki" / name).is_file()
        assert (state / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / "audit.log").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert list(elsewhere.iterdir()) == []  # nothing written where it was started


def test_state_dir_that_cannot_be_created(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "file").write_text("")
    line = one_line_error(serve("--state-dir", tmp_path / "file" / "st", *QUIET, cwd=elsewhere))
    assert f"cannot create the state directory {tmp_path / 'file' / 'st'}" in line
    assert "--state-dir" in line


# ----------------------------------------------------------------------------- PKI


def test_typo_in_pki_is_an_error_not_a_new_ca(tmp_path: Path, elsewhere: Path) -> None:
    typo = tmp_path / "pkii"
    line = one_line_error(serve("--pki", typo, *QUIET, cwd=elsewhere))
    assert f"--pki {typo} is not a directory" in line
    assert f"zgate pki init --dir {typo}" in line
    assert not typo.exists()


def test_empty_pki_dir_is_an_error(tmp_path: Path, elsewhere: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(serve("--pki", empty, *QUIET, cwd=elsewhere))
    assert f"--pki {empty} holds no ca.pem" in line
    assert list(empty.iterdir()) == []


def test_no_dev_pki_without_pki(tmp_path: Path, elsewhere: Path) -> None:
    line = one_line_error(
        serve("--state-dir", tmp_path / "st", "--no-dev-pki", *QUIET, cwd=elsewhere)
    )
    assert "--no-dev-pki" in line and "zgate pki init" in line


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("relay.key", "private key {path} does not belong to relay certificate"),
        ("ca.pem", "was not signed by the CA in {path}"),
    ],
)
def test_a_file_from_another_pki(
    pki: PkiPaths, tmp_path: Path, elsewhere: Path, file: str, expected: str, engine: str
) -> None:
    # The relay's key, or its CA, swapped for another PKI's: they no longer fit together.
    other = init_pki(tmp_path / "other")
    broken = copy_pki(pki, tmp_path / "broken")
    shutil.copy(other.directory / file, broken.directory / file)
    line = one_line_error(serve("--pki", broken.directory, *QUIET, cwd=elsewhere, engine=engine))
    assert expected.format(path=broken.directory / file) in line


def test_missing_certificate(pki: PkiPaths, tmp_path: Path, elsewhere: Path, engine: str) -> None:
    broken = copy_pki(pki, tmp_path / "broken")
    broken.relay_cert.unlink()
    line = one_line_error(serve("--pki", broken.directory, *QUIET, cwd=elsewhere, engine=engine))
    assert f"relay certificate {broken.relay_cert} does not exist" in line


@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [
        ("relay.pem", "garbage\n", "is not a PEM certificate"),
        ("relay.key", "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n", "valid PEM"),
        ("ca.pem", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", "valid PEM"),
        ("crl.pem", "junk\n", "is not a valid PEM CRL"),
    ],
)
def test_malformed_pem(
    pki: PkiPaths,
    tmp_path: Path,
    elsewhere: Path,
    file: str,
    content: str,
    expected: str,
    engine: str,
) -> None:
    broken = copy_pki(pki, tmp_path / "broken")
    (broken.directory / file).write_text(content)
    line = one_line_error(serve("--pki", broken.directory, *QUIET, cwd=elsewhere, engine=engine))
    assert str(broken.directory / file) in line and expected in line
    assert "See https://" not in line


def _resign_relay(paths: PkiPaths, start: datetime, end: datetime) -> None:
    """Replace the relay certificate with one valid only from `start` to `end`."""
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    old = x509.load_pem_x509_certificate(paths.relay_cert.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths.relay_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_expired_and_not_yet_valid_relay_certificate(
    pki: PkiPaths, tmp_path: Path, elsewhere: Path, engine: str
) -> None:
    now = datetime.now(UTC)
    broken = copy_pki(pki, tmp_path / "broken")
    _resign_relay(broken, now - timedelta(days=30), now - timedelta(days=1))
    line = one_line_error(serve("--pki", broken.directory, *QUIET, cwd=elsewhere, engine=engine))
    assert f"relay certificate {broken.relay_cert} expired on" in line
    _resign_relay(broken, now + timedelta(days=1), now + timedelta(days=30))
    line = one_line_error(serve("--pki", broken.directory, *QUIET, cwd=elsewhere, engine=engine))
    assert "is not valid yet" in line and "clock" in line


@pytest.mark.needs(root=True, tools=("setpriv",), reason="to run as another user")
def test_key_unreadable_for_the_service_user(elsewhere: Path) -> None:
    # pytest's own temporary folders are private to root: use one that others may enter.
    shared = Path(tempfile.mkdtemp(prefix="zgate-startup-"))
    try:
        shared.chmod(0o755)
        pki = init_pki(shared / "pki")
        _run_as_nobody_with_unreadable_key(pki, elsewhere)
    finally:
        shutil.rmtree(shared)


def _run_as_nobody_with_unreadable_key(pki: PkiPaths, elsewhere: Path) -> None:
    pki.directory.chmod(0o755)
    for public in (pki.ca_cert, pki.relay_cert, pki.crl):
        public.chmod(0o644)
    elsewhere.chmod(0o777)
    proc = subprocess.run(
        [*NOBODY, SERVE, "--pki", str(pki.directory), "--audit-log", "off", *QUIET],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=elsewhere,
    )
    line = one_line_error(proc)
    assert f"cannot read private key {pki.relay_key}: permission denied (mode 0600" in line
    assert "owner root" in line


# --------------------------------------------------------------- settings and ports


def test_pool_too_small(elsewhere: Path) -> None:
    line = one_line_error(serve("--pool", "10.100.0.1/32", *QUIET, cwd=elsewhere))
    assert "pool" in line and "10.100.0.1/32 is too small" in line


def test_pool_with_host_bits(elsewhere: Path) -> None:
    line = one_line_error(serve("--pool", "10.100.0.1/16", *QUIET, cwd=elsewhere))
    assert "pool" in line and "has host bits set; did you mean 10.100.0.0/16?" in line


@pytest.fixture
def busy_udp() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def busy_tcp() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_udp_port_in_use(pki: PkiPaths, elsewhere: Path, busy_udp: int, engine: str) -> None:
    line = one_line_error(
        serve(
            "--pki",
            pki.directory,
            *QUIET,
            "--listen",
            f"127.0.0.1:{busy_udp}",
            cwd=elsewhere,
            engine=engine,
        )
    )
    assert f"UDP 127.0.0.1:{busy_udp} is already in use" in line and "--listen" in line


def test_metrics_port_in_use(pki: PkiPaths, elsewhere: Path, busy_tcp: int) -> None:
    args: list[str | Path] = ["--pki", pki.directory, "--no-egress", "--log-level", "error"]
    args += ["--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{busy_tcp}"]
    line = one_line_error(serve(*args, cwd=elsewhere))
    assert f"metrics address 127.0.0.1:{busy_tcp} is already in use" in line
    assert "--metrics" in line


def test_listen_address_not_on_this_machine(pki: PkiPaths, elsewhere: Path) -> None:
    line = one_line_error(
        serve("--pki", pki.directory, *QUIET, "--listen", "192.0.2.1:4433", cwd=elsewhere)
    )
    assert "UDP 192.0.2.1:4433 is not an address of this machine" in line


def test_audit_log_in_a_missing_folder(pki: PkiPaths, tmp_path: Path, elsewhere: Path) -> None:
    target = tmp_path / "nope" / "audit.log"
    line = one_line_error(
        serve("--pki", pki.directory, "--audit-log", target, *QUIET, cwd=elsewhere)
    )
    assert f"--audit-log {target}: folder {target.parent} does not exist" in line


# ---------------------------------------------------------------------------- GeoIP


def test_geoip_file_that_is_not_a_maxmind_database(
    pki: PkiPaths, tmp_path: Path, elsewhere: Path
) -> None:
    bogus = tmp_path / "countries.mmdb"
    bogus.write_bytes(os.urandom(4096))
    line = one_line_error(serve("--pki", pki.directory, "--geoip", bogus, *QUIET, cwd=elsewhere))
    assert f"--geoip {bogus}: not a valid MaxMind DB file" in line


def test_geoip_database_without_countries(pki: PkiPaths, tmp_path: Path, elsewhere: Path) -> None:
    asn = tmp_path / "asn.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"autonomous_system_number": 64500})
    writer.to_db_file(str(asn))
    line = one_line_error(serve("--pki", pki.directory, "--geoip", asn, *QUIET, cwd=elsewhere))
    assert "'GeoLite2-ASN' database, which has no countries" in line


def test_debug_adds_the_traceback(tmp_path: Path, elsewhere: Path) -> None:
    proc = serve("--pki", tmp_path / "pkii", "--debug", *QUIET, cwd=elsewhere)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "StartupError" in proc.stderr


def test_dns_port_in_use(pki: PkiPaths, elsewhere: Path, busy_udp: int) -> None:
    proc = subprocess.run(
        [SERVE, "--pki", str(pki.directory), *QUIET, "--dns-upstream", "192.0.2.53"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=elsewhere,
        env={**os.environ, "ZGATE_RELAY_DNS_PORT": str(busy_udp)},
    )
    line = one_line_error(proc)
    assert f"127.0.0.1']:{busy_udp}" in line and "Address already in use" in line
    assert "--pool" in line and "--no-dns" in line


def test_bad_dns_upstream(pki: PkiPaths, elsewhere: Path) -> None:
    args: list[str | Path] = ["--pki", pki.directory, *QUIET, "--dns-upstream", "resolver.example"]
    line = one_line_error(serve(*args, cwd=elsewhere))
    assert "DNS upstream 'resolver.example' is not IP[:port]" in line
    assert "--dns-upstream" in line
