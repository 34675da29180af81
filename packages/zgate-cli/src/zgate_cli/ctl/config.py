"""Where `zgate ctl` finds the control plane and its token.

Each setting is taken from the first place that has it: the command line, the environment
(``ZGATE_CONTROL_URL``, ``ZGATE_CONTROL_TOKEN``), the config file (``--config FILE``, else
``$XDG_CONFIG_HOME/zgate/ctl.yaml`` or ``~/.config/zgate/ctl.yaml`` when it exists), the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import yaml

from .errors import UsageError

__all__ = [
    "API_PREFIX",
    "CONFIG_KEYS",
    "DEFAULT_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "Connection",
    "default_config_path",
    "resolve_connection",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
URL_ENV: Final = "ZGATE_CONTROL_URL"
TOKEN_ENV: Final = "ZGATE_CONTROL_TOKEN"
API_PREFIX: Final = "/api/v1"
#: The keys a config file may hold; anything else is refused so a typo does not go unnoticed.
CONFIG_KEYS: Final = frozenset({"url", "token"})


@dataclass(frozen=True, slots=True)
class Connection:
    """The control plane's base URL and the token to send, each with where it came from
    (for messages that tell the operator what to change)."""

    url: str
    token: str | None
    url_from: str
    token_from: str | None

    @property
    def api(self) -> str:
        """The base of every API path (``<url>/api/v1``)."""
        return self.url + API_PREFIX


def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/zgate/ctl.yaml``, else ``~/.config/zgate/ctl.yaml``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "zgate" / "ctl.yaml"


def _read_config(path: Path, *, required: bool) -> dict[str, str]:
    """The settings in the config file `path` ({} when it is optional and absent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a mapping with url: and token:")
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} (known: url, token)"
        )
    settings: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"config file {path}: {key}: must be a non-empty string")
        settings[key] = value.strip()
    return settings


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --token-file {path}: {exc}") from None
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token


def _normal_url(url: str, source: str) -> str:
    """`url` without a trailing slash (or ``/api/v1``); UsageError naming `source` if bad."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"control plane URL {url!r} (from {source}) is not http(s)://HOST[:PORT],"
            f" e.g. {DEFAULT_URL}"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise UsageError(f"control plane URL {url!r} (from {source}) has a bad port") from None
    if parts.query or parts.fragment:
        raise UsageError(f"control plane URL {url!r} (from {source}) must not have a query")
    return text.removesuffix(API_PREFIX)


def resolve_connection(
    *,
    url: str | None,
    token: str | None,
    token_file: Path | None,
    config: Path | None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """The connection from the command-line values, then `env`, then the config file."""
    env = os.environ if env is None else env
    if token is not None and token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    config_path = config if config is not None else default_config_path(env)
    file_settings = _read_config(config_path, required=config is not None)
    in_file = f"{config_path} (url:)"

    url_value, url_from = DEFAULT_URL, "the default"
    for value, source in (
        (url, "--url"),
        (env.get(URL_ENV), URL_ENV),
        (file_settings.get("url"), in_file),
    ):
        if value:
            url_value, url_from = value, source
            break

    token_value: str | None = None
    token_from: str | None = None
    if token is not None:
        token_value, token_from = token.strip(), "--token"
    elif token_file is not None:
        token_value, token_from = _read_token_file(token_file), f"--token-file {token_file}"
    elif env.get(TOKEN_ENV):
        token_value, token_from = env[TOKEN_ENV].strip(), TOKEN_ENV
    elif "token" in file_settings:
        token_value, token_from = file_settings["token"], f"{config_path} (token:)"
    if token_value == "":
        raise UsageError(f"the token from {token_from} is empty")
    return Connection(_normal_url(url_value, url_from), token_value, url_from, token_from)
