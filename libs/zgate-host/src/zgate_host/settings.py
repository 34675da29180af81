"""Layered daemon settings: defaults < YAML file < environment (ZGATE_...) < flags.

Each service declares one pydantic-settings model; :func:`load_settings` builds it from the
layers and turns a validation failure into one readable error naming the bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

__all__ = ["LayeredSettings", "SettingsError", "load_settings", "parse_hostport"]

S = TypeVar("S", bound="LayeredSettings")

# The YAML layer of the settings being built (a context variable, not a class attribute,
# so that concurrent loads of different files cannot mix).
_yaml_layer: ContextVar[Mapping[str, Any] | None] = ContextVar("_yaml_layer", default=None)


class SettingsError(Exception):
    """The configuration is invalid; the message names the file/field and the problem."""


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class LayeredSettings(BaseSettings):
    """Base for service settings; subclasses set ``model_config`` (env prefix, extra)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, _yaml_layer.get() or {}))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(cls: type[S], config_file: Path | None, flags: Mapping[str, Any]) -> S:
    """Build ``cls`` from its defaults, the YAML file, the environment and the flags
    (flags whose value is None are treated as not given)."""
    yaml_data = _read_yaml(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    token = _yaml_layer.set(yaml_data)
    try:
        return cls(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{field}: {err['msg']} (got {err.get('input')!r})")
        where = f" (config file {config_file})" if config_file else ""
        raise SettingsError(f"invalid settings{where}: " + "; ".join(problems)) from None
    finally:
        _yaml_layer.reset(token)


def parse_hostport(value: str, default_port: int, *, default_host: str = "") -> tuple[str, int]:
    """Split "host:port", "[v6]:port", "v6", "host" or ":port" into (host, port).

    Raises ValueError for a bad port, or an empty host when no ``default_host`` is given.
    """
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare host, or an IPv6 address without brackets (no port)
        host, port_text = text, ""
    if port_text and not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {value!r}")
    host = host or default_host
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, port
