"""The relay's start-up checks: everything an operator can get wrong, found before the relay
does any privileged work, and each reported as one `StartupError` line that names the file,
flag or address involved and the fix."""

from __future__ import annotations

import errno
import logging

from zgate_host.state import ensure_state_dir
from zgate_pki import PkiError, PkiPaths, check_identity_files, init_pki
from zgate_relay.settings import RelaySettings

__all__ = ["StartupError", "address_error", "check_pki", "prepare_state"]

log = logging.getLogger("zgate.relay")


class StartupError(Exception):
    """The relay cannot start as configured; the message is one line for the operator."""


def prepare_state(settings: RelaySettings) -> None:
    """Create the state directory, and a development PKI in it when no PKI was configured.

    An explicitly configured PKI directory that holds no PKI is an error: a typo in
    ``--pki`` must not quietly start a relay with a brand-new CA.
    """
    # Created only when something lives in it: a relay given --pki and an audit log
    # elsewhere (or none) needs no writable state directory.
    audit = settings.audit_log
    if not settings.pki_given or (audit is not None and audit.is_relative_to(settings.state_dir)):
        ensure_state_dir(settings.state_dir)
    if settings.audit_log is not None and not settings.audit_log.parent.is_dir():
        raise StartupError(
            f"--audit-log {settings.audit_log}: folder {settings.audit_log.parent} does not "
            f"exist; create it or choose another file"
        )
    paths = PkiPaths(settings.pki)
    try:
        if paths.ca_cert.exists():
            return
    except OSError as exc:
        raise StartupError(
            f"cannot look into --pki {settings.pki}: {exc.strerror or exc}; make the folder "
            f"readable by this user (chown or chmod), or run as its owner"
        ) from None
    if settings.pki_given:
        hint = "is not a directory" if not settings.pki.is_dir() else "holds no ca.pem"
        raise StartupError(
            f"--pki {settings.pki} {hint}: create a PKI there with `zgate pki init --dir "
            f"{settings.pki} --relay-name <the name agents dial>`, or correct the path"
        )
    if not settings.dev_pki:
        raise StartupError(
            f"no PKI in {settings.pki} and --no-dev-pki is set: give --pki DIR, or create one "
            f"with `zgate pki init --dir {settings.pki}`"
        )
    log.warning(
        "NO PKI FOUND: creating a DEVELOPMENT PKI (self-made CA, keys on local disk). "
        "Do not use it in production; run `zgate pki init` and keep ca.key offline.",
        extra={"pki": str(settings.pki)},
    )
    try:
        init_pki(settings.pki)
    except PkiError as exc:
        raise StartupError(f"cannot create a development PKI: {exc}") from None


def check_pki(settings: RelaySettings) -> None:
    """The relay's certificate, key, CA and CRL are usable together."""
    paths = PkiPaths(settings.pki)
    try:
        check_identity_files(
            paths.relay_cert,
            paths.relay_key,
            ca=paths.ca_cert,
            cert_flag=None,
            key_flag=None,
            ca_flag=None,
            what="relay certificate",
        )
    except PkiError as exc:
        raise StartupError(str(exc)) from None


def address_error(exc: OSError, what: str, flag: str, address: str) -> StartupError:
    """An OSError from binding ``address`` as one line naming the flag and the fix."""
    if exc.errno == errno.EADDRINUSE:
        detail = "is already in use (another relay running?): stop that process or choose"
    elif exc.errno == errno.EADDRNOTAVAIL:
        detail = "is not an address of this machine: choose"
    elif exc.errno == errno.EACCES:
        detail = "needs privileges (a port below 1024?): choose"
    else:
        detail = f"cannot be used ({exc.strerror or exc}): choose"
    return StartupError(f"{what} {address} {detail} another {flag}")
