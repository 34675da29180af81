"""What clients, connectors and relays share: the changes their edits append, ETags and the
translation of PKI errors into problems."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import Path, Query
from pydantic import Field
from sqlalchemy.orm import Session

from zgate_control import ca, changelog
from zgate_control.problems import ProblemError
from zgate_pki import CertificateBundle, PkiError

__all__ = [
    "MAX_BIGINT",
    "PRINTABLE",
    "IdPath",
    "Printable",
    "RevocationAction",
    "TextQuery",
    "append_connectors",
    "append_revocation",
    "bundle_out",
    "check_if_match",
    "etag",
    "invalid",
]

RevocationAction = Literal["revoke", "disable", "enable"]

#: Text stored as given contains no control characters (PostgreSQL refuses NUL in text and
#: JSONB, and nothing here has a use for the others).
PRINTABLE: Final = r"^[^\x00-\x1f\x7f]*$"
#: The largest value a BIGINT column holds (sequence numbers, byte counters).
MAX_BIGINT: Final = 2**63 - 1
#: A free-text field of a request body.
Printable = Annotated[str, Field(pattern=PRINTABLE)]
#: The id of a client, connector or relay in a path.
IdPath = Annotated[str, Path(min_length=1, max_length=200, pattern=PRINTABLE)]
#: A free-text query filter.
TextQuery = Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)]


def etag(row_version: int) -> str:
    """The (strong) ETag of a row at `row_version`."""
    return f'"{row_version}"'


def check_if_match(if_match: str | None, row_version: int, what: str) -> None:
    """Refuse with 412 when an If-Match was sent and names no current ETag (it is optional)."""
    if if_match is None:
        return
    wanted = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    current = etag(row_version)
    if "*" not in wanted and current not in wanted:
        raise ProblemError(
            412,
            f"If-Match {if_match} is stale: {what} is now at ETag {current}; "
            "GET it again and retry",
            slug="stale",
            etag=current,
        )


def invalid(exc: PkiError) -> ProblemError:
    """A PKI validation error as a 422 problem."""
    return ProblemError(422, str(exc), slug="invalid")


def bundle_out(bundle: CertificateBundle) -> dict[str, Any]:
    """A bundle as the API returns it (once): certificate, private key and CA, all PEM."""
    return {
        "serial": ca.serial_hex(bundle.serial),
        "not_after": bundle.not_after,
        "cert_pem": bundle.cert_pem.decode(),
        "key_pem": bundle.key_pem.decode(),
        "ca_pem": bundle.ca_pem.decode(),
    }


def append_revocation(session: Session, ident: str, action: RevocationAction) -> int:
    """Append a ``revocation`` change with the current CRL and blocked serials."""
    payload = {
        "crl_pem": ca.crl_pem(session),
        "blocked": changelog.blocked_serials(session),
        "client": ident,
        "action": action,
    }
    return changelog.append(session, "revocation", payload)


def append_connectors(session: Session) -> int:
    """Append a ``connectors`` change carrying the whole current set."""
    session.flush()
    return changelog.append(session, "connectors", {"connectors": changelog.connector_set(session)})
