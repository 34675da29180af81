"""The index.json parser: round trips, and any other input is a PkiError."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_pki import PkiError
from zgate_pki._index import IndexRecord, PkiIndex, dump_index, parse_index

idents = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", fullmatch=True)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
records = st.builds(
    IndexRecord,
    kind=st.sampled_from(["client", "connector"]),
    ident=idents,
    serial=st.integers(min_value=1, max_value=2**159),
    groups=st.lists(idents, max_size=3).map(tuple),
    not_after=times,
    revoked_at=st.none() | times,
    reason=st.none() | st.sampled_from(["keyCompromise", "superseded"]),
)
indexes = st.builds(
    PkiIndex,
    trust_domain=st.sampled_from(["zgate.local", "corp.example.com"]),
    crl_number=st.integers(min_value=0, max_value=2**31),
    records=st.lists(records, max_size=4).map(tuple),
)


@settings(max_examples=100)
@given(indexes)
def test_round_trip(index: PkiIndex) -> None:
    assert parse_index(dump_index(index)) == index


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_pki_error_or_an_index(data: bytes) -> None:
    try:
        index = parse_index(data)
    except PkiError:
        return
    assert isinstance(index, PkiIndex)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    index=indexes,
    key=st.sampled_from(["kind", "id", "serial", "groups", "not_after", "revoked_at", "reason"]),
    value=json_values,
)
def test_mangled_records_are_pki_errors(index: PkiIndex, key: str, value: object) -> None:
    doc = json.loads(dump_index(index))
    doc["certificates"].append(
        {
            "kind": "client",
            "id": "x",
            "serial": "1f",
            "groups": [],
            "not_after": "2030-01-01T00:00:00+00:00",
        }
        | {key: value}
    )
    try:
        parsed = parse_index(json.dumps(doc).encode())
    except PkiError:
        return
    assert len(parsed.records) == len(index.records) + 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not an object"),
        ({"version": 2}, "unsupported version"),
        ({"version": 1, "trust_domain": "td.example", "crl_number": True}, "crl_number"),
        ({"version": 1, "trust_domain": "bad domain", "crl_number": 0}, "trust domain"),
    ],
)
def test_malformed_documents(doc: object, message: str) -> None:
    with pytest.raises(PkiError, match=message):
        parse_index(json.dumps(doc).encode())


def test_naive_timestamps_are_rejected() -> None:
    index = PkiIndex(
        "zgate.local",
        records=(IndexRecord("client", "a", 1, (), datetime.now(UTC) + timedelta(days=1)),),
    )
    text = dump_index(index).decode().replace("+00:00", "")
    with pytest.raises(PkiError, match="time zone"):
        parse_index(text.encode())
