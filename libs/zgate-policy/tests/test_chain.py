"""The audit hash chain: linking, resuming, and verification that finds each deletion,
alteration and swap at its line (examples, then hypothesis over random chains)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy.chain import (
    GENESIS,
    Chainer,
    ChainProblem,
    ChainReport,
    UnchainedRecord,
    canonical_json,
    record_hash,
    verify_lines,
    verify_link,
    verify_records,
)


def counter_ids() -> Callable[[], str]:
    numbers: Iterator[int] = iter(range(1, 1_000_000))
    return lambda: f"{next(numbers):032x}"


def chain_of(
    n: int, relay: str = "relay-a", chainer: Chainer | None = None
) -> list[dict[str, Any]]:
    chainer = chainer or Chainer.new()
    return [chainer.link({"event": "flow.allow", "relay": relay, "n": i}) for i in range(n)]


def as_lines(records: list[dict[str, Any]]) -> list[str]:
    # Written in the record's own key order (as the relay does), not the canonical one.
    return [json.dumps(r, separators=(",", ":")) for r in records]


def problems_of(report: ChainReport) -> list[ChainProblem]:
    found = list(report.unchained)
    for group in report.groups:
        found += group.problems
    return sorted(found)


def positions(report: ChainReport) -> list[int]:
    return [p.position for p in problems_of(report)]


# --- hashing and linking ----------------------------------------------------------------


def test_canonical_json_sorts_keys_and_escapes() -> None:
    assert canonical_json({"b": 1, "a": "é", "c": [1.5, None]}) == (
        '{"a":"\\u00e9","b":1,"c":[1.5,null]}'
    )


def test_record_hash_is_sha256_of_the_canonical_json_without_hash() -> None:
    record = {"z": 1, "a": "x", "hash": "whatever"}
    expected = hashlib.sha256(b'{"a":"x","z":1}').hexdigest()
    assert record_hash(record) == expected
    assert record_hash({"a": "x", "z": 1}) == expected


def test_link_adds_the_chain_fields_in_order() -> None:
    ids = counter_ids()
    chainer = Chainer.new(new_id=ids)
    first = chainer.link({"ts": "t", "event": "e", "relay": "r"})
    second = chainer.link({"ts": "t2", "event": "e", "relay": "r"})
    assert list(first) == ["ts", "event", "relay", "id", "chain", "seq", "prev", "hash"]
    assert first["chain"] == second["chain"] == f"{1:032x}"
    assert (first["id"], second["id"]) == (f"{2:032x}", f"{3:032x}")
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert first["hash"] == record_hash(first)
    assert (chainer.seq, chainer.prev) == (2, second["hash"])


def test_link_copies_and_refuses_records_with_chain_fields() -> None:
    chainer = Chainer.new()
    original = {"event": "e"}
    chainer.link(original)
    assert original == {"event": "e"}
    with pytest.raises(ValueError, match="already has chain fields: seq"):
        chainer.link({"event": "e", "seq": 3})


def test_new_chains_differ() -> None:
    a, b = Chainer.new(), Chainer.new()
    assert a.chain != b.chain and len(a.chain) == 32
    assert (a.seq, a.prev) == (0, GENESIS)


def test_resume_continues_after_a_record() -> None:
    records = chain_of(3)
    chainer = Chainer.resume(json.loads(json.dumps(records[-1])))
    records += [chainer.link({"event": "later", "relay": "relay-a"})]
    assert records[-1]["seq"] == 4 and records[-1]["chain"] == records[0]["chain"]
    report = verify_lines(as_lines(records))
    assert report.ok and [g.records for g in report.groups] == [4]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"event": "e"}, "no id, chain, seq, prev, hash"),
        ({"id": "a", "chain": "c", "seq": 0, "prev": GENESIS, "hash": GENESIS}, "seq 0"),
        ({"id": "a", "chain": "c", "seq": True, "prev": GENESIS, "hash": GENESIS}, "seq True"),
        ({"id": "a", "chain": "", "seq": 1, "prev": GENESIS, "hash": GENESIS}, "chain ''"),
        ({"id": "a", "chain": "c", "seq": 1, "prev": "00", "hash": GENESIS}, "prev '00'"),
        ({"id": "a", "chain": "c", "seq": 1, "prev": GENESIS, "hash": 7}, "hash 7"),
    ],
)
def test_resume_refuses_an_unchained_record(record: dict[str, Any], problem: str) -> None:
    with pytest.raises(UnchainedRecord, match=problem):
        Chainer.resume(record)


# --- verification by example ------------------------------------------------------------


def test_a_valid_file_with_two_relays_interleaved() -> None:
    a, b = chain_of(4, "relay-a"), chain_of(3, "relay-b")
    mixed = [a[0], b[0], a[1], a[2], b[1], b[2], a[3]]
    report = verify_lines(as_lines(mixed))
    assert report.ok and report.records == 7
    assert [(g.relay, g.records, g.first_seq, g.last_seq) for g in report.groups] == [
        ("relay-a", 4, 1, 4),
        ("relay-b", 3, 1, 3),
    ]
    assert all(g.ok and not g.notes for g in report.groups)


def test_deletion_names_the_gap() -> None:
    records = chain_of(8)
    kept = records[:4] + records[6:]  # seq 5 and 6 gone
    report = verify_lines(as_lines(kept))
    assert not report.ok
    assert problems_of(report) == [
        ChainProblem(
            5,
            7,
            records[6]["id"],
            "deleted: seq jumps from 4 to 7, 2 records missing before this one",
        )
    ]


def test_a_file_starting_later_is_a_note_not_a_failure() -> None:
    report = verify_lines(as_lines(chain_of(6)[3:]))
    assert report.ok
    [group] = report.groups
    assert [n.problem for n in group.notes] == [
        "starts at seq 4 (earlier records not in this file)"
    ]
    assert (group.first_seq, group.last_seq) == (4, 6)


def test_alteration_and_replacement() -> None:
    records = chain_of(5)
    altered = [dict(r) for r in records]
    altered[1]["n"] = 99  # the hash no longer matches: found at this line
    report = verify_lines(as_lines(altered))
    assert [(p.position, p.problem) for p in problems_of(report)] == [
        (2, "altered: the hash does not match the record's content")
    ]
    # A forger who recomputes the hash breaks the next record's link instead.
    altered[1]["hash"] = record_hash(altered[1])
    report = verify_lines(as_lines(altered))
    [problem] = problems_of(report)
    assert problem.position == 3
    assert problem.problem.startswith("broken link: prev does not match the hash of seq 2 (line 2)")


def test_replay_and_reorder() -> None:
    records = chain_of(4)
    report = verify_lines(as_lines([*records[:3], records[1], records[3]]))
    assert [(p.position, p.problem) for p in problems_of(report)] == [
        (4, "reordered or replayed: seq 2 after seq 3"),
        (5, "deleted: seq jumps from 2 to 4, 1 record missing before this one"),
    ]


def test_seq_one_must_follow_genesis() -> None:
    record = Chainer("c", prev="1" * 64).link({"event": "e"})
    report = verify_records([(1, record)])
    assert [p.problem for p in problems_of(report)] == [
        "broken link: seq 1 but prev is not the genesis hash"
    ]


def test_lines_that_are_not_chained_records() -> None:
    good = as_lines(chain_of(2))
    lines: list[str | bytes] = [good[0], "not json", "", "[1,2]", '{"event":"old"}']
    lines += [b"\xff\xfe", good[1]]
    report = verify_lines(lines)
    assert not report.ok and report.groups[0].ok
    assert [(p.position, p.problem.split(":")[0]) for p in report.unchained] == [
        (2, "not JSON"),
        (4, "unchained record"),
        (5, "unchained record"),
        (6, "not JSON"),
    ]
    assert report.records == 6  # the blank line is no record


def test_a_malformed_chain_field_counts_in_its_group() -> None:
    records = chain_of(3)
    records[1]["seq"] = "2"
    report = verify_lines(as_lines(records))
    [group] = report.groups
    assert group.records == 3
    assert [(p.position, p.problem) for p in group.problems] == [
        (2, "unchained record: seq '2' is not a positive integer"),
        (3, "deleted: seq jumps from 1 to 3, 1 record missing before this one"),
    ]


def test_verify_link_for_the_ingest_check() -> None:
    records = chain_of(4)
    assert verify_link(None, None, records[0]) is None
    assert verify_link(None, None, records[2]) is None  # the first the control plane sees
    assert verify_link(records[0]["hash"], 1, records[1]) is None
    assert verify_link(records[0]["hash"], 1, records[2]) == (
        "deleted: seq jumps from 1 to 3, 1 record missing before this one"
    )
    assert verify_link(records[2]["hash"], 3, records[1]) == (
        "reordered or replayed: seq 2 after seq 3"
    )
    tampered = {**records[1], "n": 7}
    assert verify_link(records[0]["hash"], 1, tampered) == (
        "altered: the hash does not match the record's content"
    )
    assert verify_link(GENESIS, 1, records[1]).startswith("broken link")  # type: ignore[union-attr]
    assert verify_link(None, None, {"event": "x"}) == (
        "unchained record: no id, chain, seq, prev, hash"
    )


# --- properties ---------------------------------------------------------------------------

VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 9), max_size=3),
)
CONTENTS = st.lists(
    st.dictionaries(st.sampled_from(["event", "client", "dst", "n", "détail"]), VALUES),
    min_size=2,
    max_size=25,
)


def build(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chainer = Chainer.new()
    return [chainer.link({"relay": "relay-a", **c}) for c in contents]


def different(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return "changed"
    if isinstance(value, float):
        return value + 1 if value + 1 != value else -value  # big floats absorb + 1
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return [*value, 1]


@settings(max_examples=200, deadline=None)
@given(CONTENTS)
def test_any_valid_chain_verifies(contents: list[dict[str, Any]]) -> None:
    records = build(contents)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]  # any JSON spelling
    report = verify_lines(lines)
    assert report.ok, problems_of(report)
    assert [(g.records, g.first_seq, g.last_seq) for g in report.groups] == [
        (len(records), 1, len(records))
    ]


@settings(max_examples=200, deadline=None)
@given(CONTENTS, st.data())
def test_a_deletion_is_found_where_it_was(
    contents: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(contents)
    k = data.draw(st.integers(1, len(records)), label="deleted line")
    kept = records[: k - 1] + records[k:]
    report = verify_lines(as_lines(kept))
    if k == 1:  # indistinguishable from a file that starts later: a note
        assert report.ok and report.groups[0].notes[0].problem.startswith("starts at seq 2")
    elif k == len(records):  # a cut-off end: only the control plane's last hash shows it
        assert report.ok
    else:  # the record that followed it, now on line k, says what is missing
        assert [(p.position, p.problem) for p in problems_of(report)] == [
            (k, f"deleted: seq jumps from {k - 1} to {k + 1}, 1 record missing before this one")
        ]


@settings(max_examples=200, deadline=None)
@given(CONTENTS, st.data())
def test_an_alteration_is_found_where_it_was(
    contents: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(contents)
    k = data.draw(st.integers(1, len(records)), label="altered line")
    record = records[k - 1]
    key = data.draw(st.sampled_from(sorted(record)), label="altered field")
    record[key] = different(record[key])
    found = positions(verify_lines(as_lines(records)))
    assert found and found[0] == k
    assert set(found) <= {k, k + 1}


@settings(max_examples=200, deadline=None)
@given(CONTENTS, st.data())
def test_a_swap_is_found_where_it_was(contents: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(contents)
    i = data.draw(st.integers(1, len(records) - 1), label="first swapped line")
    j = data.draw(st.integers(i + 1, len(records)), label="second swapped line")
    records[i - 1], records[j - 1] = records[j - 1], records[i - 1]
    found = positions(verify_lines(as_lines(records)))
    # On line 1 a later record is just a chain starting later; the next line shows the swap.
    assert found and found[0] == (i if i > 1 else i + 1)
    assert set(found) <= {i, i + 1, j, j + 1}


def test_problems_beyond_the_limit_are_counted_not_kept() -> None:
    records = chain_of(6)
    for record in records:
        record["n"] = -1  # every record altered
    report = verify_lines(["junk", "junk", *as_lines(records)], max_problems=3)
    [group] = report.groups
    assert (len(report.unchained), report.unchained_omitted) == (2, 0)
    assert (len(group.problems), group.omitted) == (1, 5)
    assert not report.ok and not group.ok and report.records == 8
    assert not verify_lines(["junk"], max_problems=0).ok
