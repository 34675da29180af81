"""GeoIP country lookups against databases the tests write with mmdb-writer."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_lab.harness import geoip_country as country
from zgate_lab.harness import write_geoip_db as write_db
from zgate_relay.geoip import GeoIP, GeoIPError, country_of


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return write_db(
        tmp_path / "geo.mmdb",
        {
            "203.0.113.0/25": country("DE"),
            "203.0.113.128/25": country("FR"),
            "198.51.100.0/24": {"registered_country": {"iso_code": "nl"}},  # no country field
            "2001:db8:1::/48": country("JP"),
            "2001:db8:2::/48": {"country": "BR"},  # a flat layout some databases use
            "2001:db8:3::/48": {"city": {"names": {"en": "Nowhere"}}},  # no country at all
        },
    )


def test_countries_of_ipv4_and_ipv6_addresses(db: Path) -> None:
    geo = GeoIP(db)
    assert geo.country(ipaddress.ip_address("203.0.113.5")) == "DE"
    assert geo.country("203.0.113.200") == "FR"
    assert geo.country(ipaddress.IPv4Address("198.51.100.7").packed) == "NL"
    assert geo.country(ipaddress.ip_address("2001:db8:1::99")) == "JP"
    assert geo.country("2001:db8:2::1") == "BR"
    assert geo.country("2001:db8:3::1") is None
    assert geo.country("192.0.2.1") is None  # not in the database
    assert geo.database_type == "Test-Country"
    assert geo.build_epoch > 0
    geo.close()


def test_ipv6_in_an_ipv4_only_database_is_unknown(tmp_path: Path) -> None:
    path = write_db(tmp_path / "v4.mmdb", {"203.0.113.0/24": country("DE")}, ip_version=4)
    geo = GeoIP(path)
    assert geo.country("203.0.113.1") == "DE"
    assert geo.country("2001:db8::1") is None


def test_malformed_address_is_a_value_error(db: Path) -> None:
    with pytest.raises(ValueError):
        GeoIP(db).country("not-an-ip")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(GeoIPError, match=r"nope\.mmdb: GeoIP database not found") as info:
        GeoIP(missing)
    assert info.value.path == missing


@pytest.mark.parametrize("content", [b"", b"not a maxmind database" * 50])
def test_invalid_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(content)
    with pytest.raises(GeoIPError, match=r"bad\.mmdb: not a valid MaxMind DB file"):
        GeoIP(bad)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match=re.escape(str(tmp_path))):
        GeoIP(tmp_path)


def test_reload_picks_up_a_replaced_file_and_clears_the_cache(tmp_path: Path) -> None:
    path = write_db(tmp_path / "geo.mmdb", {"203.0.113.0/24": country("DE")})
    geo = GeoIP(path, cache_size=16)
    assert geo.country("203.0.113.9") == "DE"
    replacement = write_db(tmp_path / "new.mmdb", {"203.0.113.0/24": country("AT")})
    os.replace(replacement, path)
    assert geo.country("203.0.113.9") == "DE"  # cached, and the old file is still open
    geo.reload()
    assert geo.country("203.0.113.9") == "AT"


def test_reload_of_a_broken_file_keeps_the_current_database(tmp_path: Path) -> None:
    path = write_db(tmp_path / "geo.mmdb", {"203.0.113.0/24": country("DE")})
    geo = GeoIP(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(GeoIPError):
        geo.reload()
    assert geo.country("203.0.113.10") == "DE"


def test_lookups_are_cached(db: Path) -> None:
    geo = GeoIP(db, cache_size=2)
    for _ in range(3):
        assert geo.country("203.0.113.5") == "DE"
    info = geo._cached.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses) == (2, 1)


_records = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=10,
)


@given(
    st.one_of(
        _records,
        st.fixed_dictionaries({"country": _records}),
        st.fixed_dictionaries(
            {"registered_country": st.fixed_dictionaries({"iso_code": _records})}
        ),
    )
)
def test_country_of_any_record_is_a_code_or_none(record: Any) -> None:
    code = country_of(record)
    assert code is None or (len(code) == 2 and code.isalpha() and code.isupper())
