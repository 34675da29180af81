"""Country lookups in a MaxMind-format database (GeoIP2/GeoLite2 Country or City layout)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from pathlib import Path

import maxminddb
from maxminddb.types import Record

__all__ = ["GeoIP", "GeoIPError", "country_of"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GeoIPError(Exception):
    """The GeoIP database cannot be opened or read; the message names the file."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


def _open(path: Path) -> maxminddb.Reader:
    # MODE_MEMORY, not the C extension's mmap: a database rewritten in place (``cp new old``)
    # would corrupt a mapped reader or kill the relay with SIGBUS. Lookups are cached, and
    # happen once per new flow, so the slower pure-Python reader (a few µs) costs little.
    try:
        return maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    except FileNotFoundError:
        raise GeoIPError(path, "GeoIP database not found") from None
    except maxminddb.InvalidDatabaseError:
        raise GeoIPError(path, "not a valid MaxMind DB file") from None
    except (OSError, ValueError) as exc:  # permissions, a directory, an empty file to mmap
        raise GeoIPError(path, f"cannot open GeoIP database ({exc})") from None


def _iso_code(value: Record | None) -> str | None:
    """The ISO code of a ``country``-like field: ``{"iso_code": "DE"}``, or a bare ``"DE"``."""
    if isinstance(value, dict):
        value = value.get("iso_code")
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


def country_of(record: Record | None) -> str | None:
    """The country of a database record: ``country``, else ``registered_country``."""
    if not isinstance(record, dict):
        return None
    return _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))


class GeoIP:
    """Answers ``country(ip)`` from a MaxMind DB, with a small LRU cache.

    Safe to use from several threads: ``reload`` swaps the reader and its cache as one
    closure, so a lookup sees either the old database or the new one, never a mix.
    """

    def __init__(self, path: str | Path, cache_size: int = 4096) -> None:
        self.path = Path(path)
        self.cache_size = cache_size
        self._reader = _open(self.path)
        self._cached = self._new_cache()

    @property
    def database_type(self) -> str:
        """The database's own type name (e.g. ``GeoLite2-Country``), for logs."""
        return str(self._reader.metadata().database_type)

    @property
    def build_epoch(self) -> int:
        """When the database was built (Unix time), for logs and metrics."""
        return int(self._reader.metadata().build_epoch)

    def country(self, address: IPAddress | bytes | str) -> str | None:
        """The ISO 3166 alpha-2 code for ``address`` (object, raw 4/16 bytes or text), or None.

        None for addresses the database does not cover, including an IPv6 address in an
        IPv4-only database; a malformed address is a ``ValueError``.
        """
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            address = ipaddress.ip_address(address)
        return self._cached(address)

    def reload(self) -> None:
        """Re-open the file (after it was replaced); on error keep the current database."""
        self._reader = _open(self.path)
        # The old reader is not closed here: a lookup on another thread may still hold it.
        # It is released when the last reference to it goes.
        self._cached = self._new_cache()

    def close(self) -> None:
        """Release the database (it is held in memory, not mapped)."""
        self._reader.close()

    def _new_cache(self) -> Callable[[IPAddress], str | None]:
        reader = self._reader  # a cache belongs to one reader: reload builds a new pair

        def lookup(address: IPAddress) -> str | None:
            try:
                record = reader.get(address)
            except ValueError:  # IPv6 in an IPv4-only database
                return None
            except (maxminddb.InvalidDatabaseError, OSError) as exc:
                raise GeoIPError(self.path, f"lookup of {address} failed ({exc})") from None
            return country_of(record)

        return functools.lru_cache(maxsize=self.cache_size)(lookup)
