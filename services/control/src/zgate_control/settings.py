"""The control plane's settings: one typed model, defaults < YAML < ZGATE_CONTROL_* < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from zgate_host.settings import LayeredSettings, parse_hostport
from zgate_host.state import default_state_dir

__all__ = ["DEFAULT_LISTEN", "ControlSettings"]

DEFAULT_LISTEN = "127.0.0.1:8080"


class ControlSettings(LayeredSettings):
    """Everything zgate-control can be told. Every field can be set in the YAML file, as
    ZGATE_CONTROL_<FIELD> in the environment, or by the matching flag."""

    model_config = SettingsConfigDict(env_prefix="ZGATE_CONTROL_", extra="forbid")

    listen: str = Field(DEFAULT_LISTEN, description="HTTP address of the API, console and /metrics")
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir("control"),
        description="the control plane's files: the embedded SQLite database "
        "[/var/lib/zgate/control as root, else ~/.local/state/zgate/control]",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/zgate; "
        "none: SQLite in <state_dir>/control.db",
    )
    tls_cert: Path | None = Field(
        None,
        description="serve HTTPS with this certificate chain (PEM; with --tls-key); "
        "none: plain HTTP (keep it on loopback or behind a TLS proxy)",
    )
    tls_key: Path | None = Field(None, description="the private key of --tls-cert (PEM)")
    migrate: bool = Field(True, description="apply database migrations at start")
    trust_domain: str = Field(
        "zgate.local", description="SPIFFE trust domain of the CA created at first start"
    )
    bootstrap_token: bool = Field(
        True,
        description="at first start (no token in the database), create an admin token and "
        "print it once",
    )
    snapshot_after: int = Field(
        1000, ge=1, description="a relay this many changes behind gets a full snapshot"
    )
    poll_interval: float = Field(
        1.0, gt=0, le=30, description="seconds between change-log checks of a waiting relay"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value, 8080)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ControlSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        return self

    @property
    def scheme(self) -> str:
        """``https`` with a TLS certificate, else ``http``."""
        return "https" if self.tls_cert is not None else "http"

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) of --listen."""
        return parse_hostport(self.listen, 8080)

    def resolved_database_url(self) -> str:
        """The database URL, the embedded SQLite file when none is configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir.expanduser().absolute() / 'control.db'}"
