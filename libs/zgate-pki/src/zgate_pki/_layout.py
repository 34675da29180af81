"""Where each file of a PKI directory lives (an operator interface: keep it stable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._names import Kind

__all__ = ["PkiPaths"]


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """The files of a PKI directory.

    ``ca.pem``/``ca.key``, ``relay.pem``/``relay.key``, ``crl.pem``, ``index.json`` and the
    leaf certificates in ``clients/ID.pem`` + ``.key`` and ``connectors/ID.pem`` + ``.key``.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (``ca.pem``); the relay and agents trust it."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA private key (``ca.key``, mode 0600)."""
        return self.directory / "ca.key"

    @property
    def relay_cert(self) -> Path:
        """The relay's server certificate (``relay.pem``)."""
        return self.directory / "relay.pem"

    @property
    def relay_key(self) -> Path:
        """The relay's private key (``relay.key``, mode 0600)."""
        return self.directory / "relay.key"

    @property
    def crl(self) -> Path:
        """The certificate revocation list (``crl.pem``), signed by the CA."""
        return self.directory / "crl.pem"

    @property
    def index(self) -> Path:
        """The record of issued certificates (``index.json``)."""
        return self.directory / "index.json"

    def kind_dir(self, kind: Kind) -> Path:
        """The directory holding the leaf certificates of `kind`."""
        return self.directory / ("clients" if kind == "client" else "connectors")

    def leaf_cert(self, kind: Kind, ident: str) -> Path:
        """The certificate file of `kind`/`ident`."""
        return self.kind_dir(kind) / f"{ident}.pem"

    def leaf_key(self, kind: Kind, ident: str) -> Path:
        """The private key file of `kind`/`ident` (mode 0600)."""
        return self.kind_dir(kind) / f"{ident}.key"
