"""Test PKIs: a CA, the relay's certificate (localhost, 127.0.0.1, ::1) and leaf certificates,
made in the test's own directory (never committed), and the engine configurations that use
them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zgate_pki import ChainVerifier, PkiPaths, init_pki, issue_certificate
from zgate_proto.engines.base import ClientConfig, RefusalCallback, ServerConfig

__all__ = ["Refusals", "client_config", "make_pki", "server_config"]


def make_pki(
    directory: Path,
    clients: Iterable[str] = ("alice",),
    *,
    groups: Iterable[str] = (),
    connectors: Iterable[str] = (),
) -> PkiPaths:
    """A new PKI in ``directory``: client certificates for ``clients`` (each in ``groups``)
    and connector certificates for ``connectors``."""
    paths = init_pki(directory)
    for client in clients:
        issue_certificate(directory, "client", client, groups=list(groups))
    for connector in connectors:
        issue_certificate(directory, "connector", connector)
    return paths


@dataclass
class Refusals:
    """A server's ``on_refused`` callback that keeps each (reason, detail) it is told."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, reason: str, detail: str) -> None:
        self.seen.append((reason, detail))


def server_config(
    pki: PkiPaths | Path, on_refused: RefusalCallback | None = None, **options: Any
) -> ServerConfig:
    """The relay's QUIC server configuration: its certificate, a verifier of the PKI's CA
    and CRL, ``on_refused`` (a :class:`Refusals`, say); ``options`` set the other fields."""
    paths = pki if isinstance(pki, PkiPaths) else PkiPaths(pki)
    return ServerConfig(
        cert_file=paths.relay_cert,
        key_file=paths.relay_key,
        verifier=ChainVerifier(paths.ca_cert, paths.crl),
        on_refused=on_refused,
        **options,
    )


def client_config(
    pki: PkiPaths | Path, name: str = "alice", *, connector: bool = False, **options: Any
) -> ClientConfig:
    """A QUIC client configuration for client (or connector) ``name``, trusting the PKI's CA
    and expecting the relay as ``localhost``; ``options`` set the other fields."""
    paths = pki if isinstance(pki, PkiPaths) else PkiPaths(pki)
    kind: Literal["client", "connector"] = "connector" if connector else "client"
    settings: dict[str, Any] = {"server_name": "localhost", **options}
    return ClientConfig(
        ca_file=paths.ca_cert,
        cert_file=paths.leaf_cert(kind, name),
        key_file=paths.leaf_key(kind, name),
        **settings,
    )
