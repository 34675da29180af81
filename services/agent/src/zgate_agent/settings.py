"""The agent's settings: one typed model, defaults < YAML < ZGATE_AGENT_* env < flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from zgate_host.queue_flags import QueueSettings
from zgate_host.settings import LayeredSettings, parse_hostport
from zgate_host.state import default_state_dir
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES
from zgate_proto.session import PacketMode

__all__ = ["AgentSettings"]


class AgentSettings(LayeredSettings, QueueSettings):
    """Everything the agent can be told (YAML keys = field names; env ZGATE_AGENT_<FIELD>)."""

    model_config = SettingsConfigDict(env_prefix="ZGATE_AGENT_", extra="forbid")

    relay: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:4433"],
        description="relay HOST:PORT, or several (a YAML list, or comma-separated): one is used "
        "at a time, in order, and a name with several addresses counts as several",
    )
    ca: Path = Field(Path("ca.pem"), description="CA certificate to trust [<state_dir>/ca.pem]")
    cert: Path = Field(Path("agent.pem"), description="client certificate [<state_dir>/agent.pem]")
    key: Path = Field(Path("agent.key"), description="client private key [<state_dir>/agent.key]")
    server_name: str | None = Field(None, description="TLS name of the relay [relay host]")
    mode: PacketMode = Field(PacketMode.DATAGRAM, description="datagram or stream")
    quic_engine: str = Field(
        DEFAULT_ENGINE,
        description=f"QUIC implementation: {' or '.join(ENGINES)} [{DEFAULT_ENGINE}]",
    )
    fallback: bool = Field(True, description="use stream mode if the relay has no datagrams")
    tun_name: str = Field("zgate-agent0", description="TUN device name")
    tun_mtu: int = Field(1400, ge=1280, le=65535, description="TUN device MTU")
    full_tunnel: bool = Field(
        True, description="route everything the relay advertises (default: all) into the tunnel"
    )
    dns: bool = Field(
        True,
        description="resolve names through the relay while the tunnel is up (systemd-resolved "
        "per-link DNS, else a managed /etc/resolv.conf restored on exit)",
    )
    dns_domains: list[str] = Field(
        default_factory=list,
        description="split tunnel: resolve only names under these domains through the relay "
        "(without any, a split-tunnel agent leaves the host's resolver alone)",
    )
    dns_servers: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list,
        description="the relay's DNS addresses [the first address of its default pools: "
        "10.100.0.1, fd7a:7a67::1]; needed when the relay's --pool is another",
    )
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir("agent"),
        description="the agent's own files (the saved /etc/resolv.conf) "
        "[/var/lib/zgate/agent as root, else ~/.local/state/zgate/agent]",
    )
    max_datagram_size: int = Field(1452, ge=1350, le=65527, description="largest QUIC UDP payload")
    datagram_queue: int = Field(
        64,
        ge=8,
        description="DATAGRAM frames waiting for the congestion window, at most (each is latency "
        "for every packet behind it: 512 stood 5-7 ms deep inside a bulk TCP transfer)",
    )
    udp_offload: bool = Field(True, description="send QUIC packets in UDP GSO batches")
    tun_offload: bool = Field(
        True, description="join TCP segments into super-packets when writing to the TUN device"
    )
    metrics: str | None = Field("127.0.0.1:9102", description="/metrics and /status address")
    connect_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds one connection attempt may take (handshake and tunnel opening)",
    )
    keepalive: float = Field(
        10.0,
        gt=0,
        description="seconds between QUIC pings (with liveness on, the only pings an idle "
        "link sends)",
    )
    liveness: float = Field(
        2.0,
        ge=0,
        description="declare the relay gone when nothing authenticated was heard from it for "
        "this many seconds after the agent sent something (probing with QUIC PINGs every "
        "quarter of it meanwhile; an idle link only sends the keepalive) and reconnect at "
        "once; 0 = off: wait for the QUIC idle timeout",
    )
    liveness_probe_idle: bool = Field(
        False,
        description="with liveness on: probe every quarter of the deadline even while the "
        "link is idle and give the relay up a deadline after it was last heard, as before "
        "(for benchmarks)",
    )
    idle_timeout: float = Field(30.0, gt=1, description="QUIC idle timeout, seconds")
    backoff_initial: float = Field(0.5, gt=0, description="first reconnect delay, seconds")
    backoff_max: float = Field(30.0, gt=0, description="longest reconnect delay, seconds")
    backoff_lost_max: float = Field(
        1.0,
        gt=0,
        description="with liveness on, once a tunnel has been up: longest delay between "
        "attempts while the relay is gone or does not answer (the first retry after a loss "
        "is immediate)",
    )
    backoff_permanent: float = Field(
        60.0,
        gt=0,
        description="first delay, seconds, before retrying a failure that needs a fix "
        "(certificates, CA, server name)",
    )
    backoff_permanent_max: float = Field(
        600.0, gt=0, description="longest delay before retrying such a failure, seconds"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _files_in_state_dir(self) -> AgentSettings:
        # Certificate files not configured are looked for in the state directory, never in
        # the working directory; what an operator gives (flag, env, YAML) is taken as given.
        given = set(self.model_fields_set)  # read first: the assignments below add to it
        for name in ("ca", "cert", "key"):
            if name not in given:
                setattr(self, name, self.state_dir / getattr(self, name))
        return self

    @field_validator("relay", mode="before")
    @classmethod
    def _split_relay(cls, value: Any) -> Any:
        # One string (a flag, an env value, a YAML scalar) may list several, comma-separated.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [p for item in value for p in cls._split_relay(item)]
        return value

    @field_validator("relay")
    @classmethod
    def _check_relay(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one relay HOST:PORT is needed")
        for relay in value:
            parse_hostport(relay, 4433)
        return list(dict.fromkeys(value))

    @field_validator("liveness")
    @classmethod
    def _check_liveness(cls, value: float) -> float:
        if 0 < value < 0.2:
            raise ValueError("liveness must be 0 (off) or at least 0.2 seconds")
        return value

    @field_validator("quic_engine")
    @classmethod
    def _check_quic_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown QUIC engine {value!r}: choose one of {', '.join(ENGINES)}")
        return value

    @field_validator("dns_domains")
    @classmethod
    def _check_dns_domains(cls, value: list[str]) -> list[str]:
        domains = []
        for domain in value:
            name = domain.strip().strip(".").lower()
            if not name or any(not label or " " in label for label in name.split(".")):
                raise ValueError(f"not a DNS domain: {domain!r}")
            domains.append(name)
        return list(dict.fromkeys(domains))

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        if value in (None, "", "off"):
            return None
        parse_hostport(value, 9102)
        return value

    @property
    def relay_address(self) -> tuple[str, int]:
        """(host, port) of the first relay."""
        return parse_hostport(self.relay[0], 4433)

    @property
    def relay_hostports(self) -> list[tuple[str, int]]:
        """(host, port) of every relay, in the order given."""
        return [parse_hostport(relay, 4433) for relay in self.relay]

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of /metrics and /status, or None."""
        return None if self.metrics is None else parse_hostport(self.metrics, 9102)
