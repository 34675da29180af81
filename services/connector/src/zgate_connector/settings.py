"""The connector's settings: the agent's, plus the site it serves.

Defaults < YAML < ZGATE_CONNECTOR_* env < flags, as for the agent.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from zgate_agent.settings import AgentSettings
from zgate_host.settings import parse_hostport
from zgate_host.state import default_state_dir

__all__ = ["ConnectorSettings"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectorSettings(AgentSettings):
    """Everything a connector can be told (YAML keys = field names)."""

    model_config = SettingsConfigDict(env_prefix="ZGATE_CONNECTOR_", extra="forbid")

    relays: list[str] = Field(
        default_factory=list,
        description="relays HOST:PORT to keep a session with each (default: those of `relay`); "
        "a name with several addresses gets a session to each",
    )
    site: list[Network] = Field(
        min_length=1,
        description="the private prefixes this connector serves (advertised to the relay, "
        "which installs those the connector's id may serve)",
    )
    nat: bool = Field(
        True,
        description="masquerade agents' packets into the site (nftables table zgate_connector)",
    )
    cert: Path = Field(
        Path("connector.pem"), description="connector certificate [<state_dir>/connector.pem]"
    )
    key: Path = Field(
        Path("connector.key"), description="its private key [<state_dir>/connector.key]"
    )
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir("connector"),
        description="the connector's files [/var/lib/zgate/connector as root, else "
        "~/.local/state/zgate/connector]",
    )
    tun_name: str = Field("zgate-conn0", description="TUN device name")
    full_tunnel: bool = Field(
        False, description="route only the agents' pool (what the relay advertises) inside"
    )
    metrics: str | None = Field("127.0.0.1:9103", description="/metrics and /status address")
    keepalive: float = Field(
        1.0,
        gt=0,
        description="seconds between QUIC pings: the relay fails the site over to another "
        "connector when it hears nothing for its --connector-deadline",
    )

    @field_validator("relays")
    @classmethod
    def _check_relays(cls, value: list[str]) -> list[str]:
        for relay in value:
            parse_hostport(relay, 4433)
        return value

    @property
    def relay_addresses(self) -> list[str]:
        """Every relay this connector keeps a session with."""
        return list(self.relays) or list(self.relay)
