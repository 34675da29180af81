"""The relay's settings: one typed model, defaults < YAML < ZGATE_RELAY_* env < flags."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from zgate_host.queue_flags import QueueSettings
from zgate_host.settings import LayeredSettings, parse_hostport
from zgate_host.state import default_state_dir
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES
from zgate_proto.fq import AqmConfig

__all__ = ["RelaySettings"]


class RelaySettings(LayeredSettings, QueueSettings):
    """Everything the relay can be told. Every field can be set in the YAML file, as
    ZGATE_RELAY_<FIELD> in the environment, or by the matching flag."""

    model_config = SettingsConfigDict(env_prefix="ZGATE_RELAY_", extra="forbid")

    listen: str = Field("0.0.0.0:4433", description="UDP address the QUIC server listens on")
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir("relay"),
        description="the relay's own files: audit log, development PKI "
        "[/var/lib/zgate/relay as root, else ~/.local/state/zgate/relay]",
    )
    pki: Path = Field(
        Path("pki"),
        description="PKI directory (ca.pem, crl.pem, relay.pem, relay.key) [<state_dir>/pki]; "
        "given explicitly, it must hold a PKI",
    )
    dev_pki: bool = Field(
        True,
        description="create a development PKI in <state_dir>/pki when no --pki is given and "
        "none exists there (loud warning)",
    )
    pool: ipaddress.IPv4Network = Field(
        ipaddress.IPv4Network("10.100.0.0/16"), description="IPv4 tunnel address pool"
    )
    pool6: ipaddress.IPv6Network | None = Field(
        ipaddress.IPv6Network("fd7a:7a67::/64"), description="IPv6 tunnel pool (ULA); null: none"
    )
    metrics: str | None = Field("127.0.0.1:9101", description="where /metrics is served")
    tun_name: str = Field("zgate0", description="egress TUN device name")
    tun_mtu: int = Field(1400, ge=1280, le=65535, description="egress TUN device MTU")
    egress: bool = Field(True, description="create the TUN device + NAT (needs CAP_NET_ADMIN)")
    nat: bool = Field(True, description="install the nftables masquerade for the pool")
    quic_engine: str = Field(
        DEFAULT_ENGINE,
        description=f"QUIC implementation: {' or '.join(ENGINES)} [{DEFAULT_ENGINE}]",
    )
    max_datagram_size: int = Field(
        1452, ge=1350, le=65527, description="largest UDP payload QUIC sends (>= 1350)"
    )
    datagram_queue: int = Field(
        64,
        ge=8,
        description="per-connection DATAGRAM frames waiting for the congestion window, at most "
        "(each is latency for every packet behind it: 512 stood 5-7 ms deep in a bulk transfer)",
    )
    udp_offload: bool = Field(
        True, description="send with UDP GSO and receive with UDP GRO where the kernel has them"
    )
    tun_offload: bool = Field(
        True, description="join TCP segments into super-packets when writing to the TUN device"
    )
    max_capsule_size: int = Field(65536 + 64, ge=2048, description="largest capsule accepted")
    idle_timeout: float = Field(30.0, gt=1, description="QUIC idle timeout, seconds")
    crl_check_interval: float = Field(2.0, gt=0, description="seconds between CA/CRL file checks")
    routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = Field(
        None, description="prefixes advertised to agents; null: everything"
    )
    connectors: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = Field(
        default_factory=dict,
        description="connector id -> the private prefixes it may advertise (anything else it "
        "advertises is refused); on the command line ID=CIDR[,CIDR...]",
    )
    site_dns: dict[str, list[str]] = Field(
        default_factory=dict,
        description="private DNS domains -> resolvers inside a site (IP[:PORT]), asked through "
        "the site's connectors; on the command line DOMAIN=IP[,IP...]",
    )
    connector_deadline: float = Field(
        5.0,
        gt=0,
        description="seconds a connector may stay silent before its site fails over to the "
        "site's other connectors (connectors ping every second)",
    )
    relay_name: str = Field(
        default_factory=socket.gethostname, description="this relay's name in audit records"
    )
    policy: Path | None = Field(
        None, description="access policy file (YAML); none: every client may reach everything"
    )
    policy_check_interval: float = Field(
        1.0, ge=0, description="seconds between policy file checks; 0: only on SIGHUP/request"
    )
    enforce: bool = Field(
        True,
        description="track flows and enforce the policy (off: forward everything; "
        "for measurements only)",
    )
    geoip: Path | None = Field(None, description="MaxMind-format GeoIP country database")
    dns: bool = Field(True, description="serve DNS to agents at the relay's tunnel addresses")
    dns_upstreams: list[str] | None = Field(
        None, description="resolvers the DNS service forwards to; null: /etc/resolv.conf's"
    )
    dns_port: int = Field(53, ge=0, le=65535, description="port of the DNS service")
    audit_log: Path | None = Field(
        Path("audit.log"),
        description="audit log file (JSON lines) [<state_dir>/audit.log]; null or 'off': none",
    )
    audit_stdout: bool = Field(False, description="also write audit records to stdout")
    max_sessions: int = Field(
        5000,
        ge=0,
        description="live CONNECT-IP sessions on the relay, at most; one more is refused with "
        "503 (about 0.1 MB each: docs/relay.md); 0: no limit",
    )
    max_sessions_per_client: int = Field(
        8,
        ge=0,
        description="live sessions of one client certificate, at most; one more is refused "
        "with 429 (connectors are exempt); 0: no limit",
    )
    bare_connection_timeout: float = Field(
        10.0,
        ge=0,
        description="seconds an authenticated connection may hold no session before the relay "
        "closes it; 0: never",
    )
    retry: Literal["auto", "always", "never"] = Field(
        "auto",
        description="answer new connections with a QUIC Retry (address validation, RFC 9000 "
        "8.1) before any handshake: auto = only while connections arrive faster than "
        "--retry-above-rate or --retry-above-half-open handshakes are pending; always; "
        "never (no Retry)",
    )
    retry_above_rate: float = Field(
        20.0,
        ge=0,
        description="auto Retry: new-connection attempts per second above which to Retry",
    )
    retry_above_half_open: int = Field(
        8, ge=0, description="auto Retry: pending handshakes from which on to Retry"
    )
    max_half_open: int = Field(
        1000,
        ge=0,
        description="pending handshakes in all, at most (about 60 kB each); more new "
        "connections are dropped; 0: no limit",
    )
    max_half_open_per_source: int = Field(
        32, ge=0, description="pending handshakes per source IP, at most; 0: no limit"
    )
    new_connections_per_source: float = Field(
        20.0,
        ge=0,
        description="new-connection attempts per source IP per second (bursts of twice "
        "that pass); more are dropped; 0: no limit",
    )
    handshake_deadline: float = Field(
        10.0,
        ge=0,
        description="seconds a new connection has to complete its handshake before it is "
        "dropped; 0: until the idle timeout",
    )
    udp_receive_buffer: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="kernel receive buffer of the QUIC socket, bytes: room for a burst while "
        "the relay is busy (a flood, a slow moment of the machine) instead of dropping "
        "agents' datagrams with it; 0: the kernel's default (about 200 kB)",
    )
    reset_key: Path | None = Field(
        Path("reset.key"),
        description="the key stateless reset tokens are derived from (RFC 9000 10.3), "
        "created (0600) on first start and kept across restarts, so that a restarted relay "
        "can tell agents at once that their connection is gone [<state_dir>/reset.key]; "
        "'off': no stateless resets",
    )
    max_flows: int = Field(262144, ge=16, description="flows tracked in total")
    max_flows_per_session: int = Field(8192, ge=4, description="flows tracked per session")
    control: str | None = Field(
        None,
        description="follow this control plane (base URL, e.g. https://control.example:8443): "
        "policy, revocations and connectors come from it, heartbeats and audit records go to "
        "it; excludes --policy and --connector",
    )
    control_token: SecretStr | None = Field(
        None, description="the relay's API token for the control plane (role relay)"
    )
    control_ca: Path | None = Field(
        None,
        description="CA certificate(s) (PEM) that sign the control plane's HTTPS certificate; "
        "none: the system's trust store",
    )
    control_token_file: Path | None = Field(
        None, description="file holding the relay's API token (instead of --control-token)"
    )
    control_wait: float = Field(
        25.0, ge=1, le=30, description="seconds the control plane may hold each long poll"
    )
    control_heartbeat_interval: float = Field(
        5.0, gt=0, description="seconds between heartbeats to the control plane"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    _pki_given: bool = PrivateAttr(default=False)

    @field_validator("reset_key", mode="before")
    @classmethod
    def _reset_key_off(cls, value: object) -> object:
        return None if str(value) in ("", ".", "off", "none") else value

    def aqm_config(self) -> AqmConfig:
        """The fq-codel knobs, in the seconds zgate_proto.fq counts in."""
        return AqmConfig(target=self.aqm_target_ms / 1000, interval=self.aqm_interval_ms / 1000)

    @field_validator("audit_log", mode="before")
    @classmethod
    def _audit_off(cls, value: object) -> object:
        # The flag arrives as a Path (argparse's type=Path), YAML and the environment as text.
        return None if str(value) in ("", ".", "off", "none") else value

    @field_validator("quic_engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown QUIC engine {value!r}: choose one of {', '.join(ENGINES)}")
        return value

    @field_validator("pool", "pool6", mode="before")
    @classmethod
    def _network_hint(cls, value: object) -> object:
        # pydantic says only "not a valid IPv4 network"; say what is wrong and the fix.
        if isinstance(value, str) and value.strip():
            try:
                ipaddress.ip_network(value.strip())
            except ValueError as exc:
                hint = ""
                if "host bits" in str(exc):
                    hint = f"; did you mean {ipaddress.ip_network(value.strip(), strict=False)}?"
                raise ValueError(f"{exc}{hint}") from None
        return value

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        # The relay takes the first host address; agents need at least one more.
        if value.num_addresses < 4:
            raise ValueError(
                f"{value} is too small: the relay takes one address and agents need the "
                f"others; use a prefix of /30 or shorter, e.g. 10.100.0.0/16"
            )
        return value

    @field_validator("pool6")
    @classmethod
    def _check_pool6(cls, value: ipaddress.IPv6Network | None) -> ipaddress.IPv6Network | None:
        if value is not None and value.num_addresses < 4:
            raise ValueError(f"{value} is too small; use a prefix of /126 or shorter")
        return value

    @model_validator(mode="after")
    def _place_state(self) -> RelaySettings:
        # Defaults live in the state directory; what an operator gives (flag, env, YAML) is
        # taken as given. Only the implicit PKI may be created as a development PKI.
        given = set(self.model_fields_set)  # read first: the assignments below add to it
        self._pki_given = "pki" in given
        self.state_dir = self.state_dir.expanduser()
        if not self._pki_given:
            self.pki = self.state_dir / "pki"
        if "audit_log" not in given:
            self.audit_log = self.state_dir / "audit.log"
        if "reset_key" not in given:
            self.reset_key = self.state_dir / "reset.key"
        return self

    @field_validator("control_ca")
    @classmethod
    def _check_control_ca(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file (--control-ca)")
        return value

    @field_validator("control")
    @classmethod
    def _check_control(cls, value: str | None) -> str | None:
        if value in (None, "", "off"):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r}: expected an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _control_excludes(self) -> RelaySettings:
        # The control plane publishes the policy and the connectors: a local file or flag
        # beside it would be silently overridden, so both together are refused.
        if self.control is None:
            return self
        if self.policy is not None:
            raise ValueError(
                "--policy cannot be used with --control: the control plane publishes the "
                "policy (drop --policy, or drop --control to run from the file)"
            )
        if self.connectors:
            raise ValueError(
                "--connector cannot be used with --control: the control plane says which "
                "prefixes each connector may serve"
            )
        if self.control_token is None and self.control_token_file is None:
            raise ValueError(
                "--control needs the relay's token: --control-token TOKEN or "
                "--control-token-file FILE (a token of role relay, `zgate-control token create`)"
            )
        if self.control_token is not None and self.control_token_file is not None:
            raise ValueError("give --control-token or --control-token-file, not both")
        return self

    def control_token_value(self) -> str:
        """The control-plane token (read from its file when given so); raises ValueError
        naming the file."""
        if self.control_token is not None:
            return self.control_token.get_secret_value().strip()
        if self.control_token_file is None:
            raise ValueError("no control-plane token configured")
        try:
            token = self.control_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"--control-token-file {self.control_token_file}: {exc.strerror or exc}"
            ) from None
        if not token:
            raise ValueError(f"--control-token-file {self.control_token_file} is empty")
        return token

    @property
    def pki_given(self) -> bool:
        """Whether the PKI directory was configured (then it must hold a PKI)."""
        return self._pki_given

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value, 4433, default_host="0.0.0.0")
        return value

    @field_validator("connectors", mode="before")
    @classmethod
    def _parse_connectors(cls, value: object) -> object:
        # --connector site-a=192.168.50.0/24,fd00:50::/64 (repeatable), or a YAML mapping.
        if isinstance(value, list):
            parsed: dict[str, list[str]] = {}
            for item in value:
                ident, sep, prefixes = str(item).partition("=")
                if not sep or not ident.strip() or not prefixes.strip():
                    raise ValueError(f"connector {item!r}: expected ID=CIDR[,CIDR...]")
                parsed.setdefault(ident.strip(), []).extend(prefixes.split(","))
            value = parsed
        if not isinstance(value, dict):
            return value
        out: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        for ident, prefixes in value.items():
            items = prefixes if isinstance(prefixes, list) else [prefixes]
            nets = out.setdefault(str(ident), [])
            for prefix in items:
                try:
                    nets.append(ipaddress.ip_network(str(prefix).strip()))
                except ValueError as exc:
                    raise ValueError(f"connector {ident}: {exc}") from None
        return out

    @field_validator("site_dns", mode="before")
    @classmethod
    def _parse_site_dns(cls, value: object) -> object:
        # --site-dns corp.internal=192.168.50.10 (repeatable), or a YAML mapping.
        if not isinstance(value, list):
            return value
        out: dict[str, list[str]] = {}
        for item in value:
            domain, sep, resolvers = str(item).partition("=")
            if not sep or not domain.strip() or not resolvers.strip():
                raise ValueError(f"site DNS {item!r}: expected DOMAIN=IP[:PORT][,IP...]")
            out.setdefault(domain.strip().rstrip(".").lower(), []).extend(
                r.strip() for r in resolvers.split(",") if r.strip()
            )
        return out

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        if value not in (None, "", "off"):
            parse_hostport(value, 9101)
            return value
        return None

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) of the QUIC listener."""
        return parse_hostport(self.listen, 4433, default_host="0.0.0.0")

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics endpoint, or None when disabled."""
        return None if self.metrics is None else parse_hostport(self.metrics, 9101)
