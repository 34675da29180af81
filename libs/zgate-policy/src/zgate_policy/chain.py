"""The audit record hash chain (sans-IO): link records as they are written, verify them later.

Each record gets, after its own fields, ``id`` (uuid4 hex), ``chain`` (uuid4 hex, fixed per
chain), ``seq`` (1, 2, ... within the chain), ``prev`` (the previous record's ``hash``,
:data:`GENESIS` for seq 1) and ``hash``: the sha256 hex of the canonical JSON of the record
without ``hash``. Editing, deleting, reordering or replaying a record breaks the chain at that
record (or at the one after it), which :func:`verify_records` reports with its position.

What a chain cannot show on its own: records cut off at the end (the control plane, which
keeps the last hash it received, can), or a file that starts later in the chain (reported as a
note: rotated logs do that).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "CHAIN_FIELDS",
    "GENESIS",
    "ChainGroup",
    "ChainProblem",
    "ChainReport",
    "ChainVerifier",
    "Chainer",
    "UnchainedRecord",
    "canonical_json",
    "chain_fields_problem",
    "parse_line",
    "record_hash",
    "verify_lines",
    "verify_link",
    "verify_records",
]

#: The ``prev`` of a chain's first record.
GENESIS = "0" * 64
#: The fields :meth:`Chainer.link` adds, in the order it adds them.
CHAIN_FIELDS = ("id", "chain", "seq", "prev", "hash")

_HEX64 = re.compile(r"[0-9a-f]{64}")


class UnchainedRecord(ValueError):
    """A record lacks the chain fields (or has malformed ones), so no chain can continue it."""


def canonical_json(record: Mapping[str, Any]) -> str:
    """The one JSON text of ``record`` that is hashed: sorted keys, no spaces, ASCII only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_hash(record: Mapping[str, Any]) -> str:
    """The sha256 hex of the canonical JSON of ``record`` without its ``hash`` key."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def chain_fields_problem(record: Mapping[str, Any]) -> str | None:
    """None when ``record`` carries well-formed chain fields, else what is wrong with them."""
    missing = [name for name in CHAIN_FIELDS if name not in record]
    if missing:
        return f"unchained record: no {', '.join(missing)}"
    seq = record["seq"]
    # bool is an int subclass: true/false is not a sequence number.
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return f"unchained record: seq {seq!r} is not a positive integer"
    for name in ("id", "chain"):
        if not isinstance(record[name], str) or not record[name]:
            return f"unchained record: {name} {record[name]!r} is not a non-empty string"
    for name in ("prev", "hash"):
        value = record[name]
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            return f"unchained record: {name} {value!r} is not a sha256 hex digest"
    return None


def _new_id() -> str:
    return uuid.uuid4().hex


class Chainer:
    """Links records into one chain: the next record gets ``seq`` + 1 and ``prev`` = the hash
    of the last one. Not thread-safe: one writer links, in the order it writes."""

    def __init__(
        self,
        chain: str,
        *,
        seq: int = 0,
        prev: str = GENESIS,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        if seq < 0:
            raise ValueError("seq must not be negative")
        self.chain = chain
        #: The seq of the last record linked (0: none yet).
        self.seq = seq
        #: The hash of the last record linked (GENESIS: none yet).
        self.prev = prev
        self._new_id = new_id

    @classmethod
    def new(cls, *, new_id: Callable[[], str] = _new_id) -> Chainer:
        """A fresh chain (a new chain id); its first record gets seq 1 and prev GENESIS."""
        return cls(new_id(), new_id=new_id)

    @classmethod
    def resume(
        cls, last_record: Mapping[str, Any], *, new_id: Callable[[], str] = _new_id
    ) -> Chainer:
        """Continue the chain of ``last_record``: the next record follows it.

        Raises :class:`UnchainedRecord` when it has no usable chain fields.
        """
        problem = chain_fields_problem(last_record)
        if problem is not None:
            raise UnchainedRecord(problem)
        return cls(
            last_record["chain"], seq=last_record["seq"], prev=last_record["hash"], new_id=new_id
        )

    def link(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with ``id``, ``chain``, ``seq``, ``prev`` and ``hash`` added
        after its own fields; the chain moves on to it."""
        clash = [name for name in CHAIN_FIELDS if name in record]
        if clash:
            raise ValueError(f"the record already has chain fields: {', '.join(clash)}")
        linked = dict(record)
        linked["id"] = self._new_id()
        linked["chain"] = self.chain
        linked["seq"] = self.seq + 1
        linked["prev"] = self.prev
        linked["hash"] = record_hash(linked)
        self.seq += 1
        self.prev = linked["hash"]
        return linked


def _continuity_problem(
    prev_hashes: tuple[str, ...],
    prev_seq: int,
    prev_position: int | None,
    record: Mapping[str, Any],
) -> str | None:
    """Does ``record`` follow the record with ``prev_seq`` (whose hash is one of
    ``prev_hashes``: the stored one, and the recomputed one when they differ)?"""
    seq: int = record["seq"]
    if seq > prev_seq + 1:
        missing = seq - prev_seq - 1
        plural = "record" if missing == 1 else "records"
        return (
            f"deleted: seq jumps from {prev_seq} to {seq},"
            f" {missing} {plural} missing before this one"
        )
    if seq <= prev_seq:
        return f"reordered or replayed: seq {seq} after seq {prev_seq}"
    if record["prev"] not in prev_hashes:
        where = f" (line {prev_position})" if prev_position is not None else ""
        return (
            f"broken link: prev does not match the hash of seq {prev_seq}{where};"
            " that record was replaced, or this one was"
        )
    return None


def _hash_problem(record: Mapping[str, Any]) -> tuple[str, str | None]:
    """The recomputed hash, and the problem when the stored one differs."""
    actual = record_hash(record)
    if actual != record["hash"]:
        return actual, "altered: the hash does not match the record's content"
    return actual, None


def _genesis_problem(record: Mapping[str, Any]) -> str | None:
    if record["seq"] == 1 and record["prev"] != GENESIS:
        return "broken link: seq 1 but prev is not the genesis hash"
    return None


def verify_link(
    prev_hash: str | None, prev_seq: int | None, record: Mapping[str, Any]
) -> str | None:
    """Check one record against the last one kept of its chain (``prev_hash``, ``prev_seq``;
    both None when none is kept). None when it is fine, else the problem text."""
    problem = chain_fields_problem(record)
    if problem is not None:
        return problem
    _, altered = _hash_problem(record)
    if prev_hash is None or prev_seq is None:
        link = _genesis_problem(record)
    else:
        link = _continuity_problem((prev_hash,), prev_seq, None, record)
    found = [text for text in (altered, link) if text is not None]
    return "; ".join(found) if found else None


class ChainProblem(NamedTuple):
    """One thing wrong (or, in notes, worth saying) at a position (line number)."""

    position: int
    seq: int | None
    id: str | None
    problem: str


@dataclass(slots=True)
class ChainGroup:
    """What was found of one chain of one relay."""

    relay: str
    chain: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[ChainProblem] = field(default_factory=list)
    #: Not failures, e.g. that the chain starts after seq 1 in this file.
    notes: list[ChainProblem] = field(default_factory=list)
    #: Problems found beyond the verifier's ``max_problems``: counted, not kept.
    omitted: int = 0

    @property
    def ok(self) -> bool:
        """True when every record of the chain verified."""
        return not self.problems and not self.omitted


@dataclass(slots=True)
class ChainReport:
    """Every chain found, in order of first appearance, and the records in no chain."""

    groups: list[ChainGroup] = field(default_factory=list)
    #: Lines that are not JSON objects, or records without a chain id.
    unchained: list[ChainProblem] = field(default_factory=list)
    #: Unchained lines beyond the verifier's ``max_problems``: counted, not kept.
    unchained_omitted: int = 0

    @property
    def ok(self) -> bool:
        """True when every chain verified and every line was a chained record."""
        return (
            not self.unchained
            and not self.unchained_omitted
            and all(group.ok for group in self.groups)
        )

    @property
    def records(self) -> int:
        """How many records (and unusable lines) were read."""
        unchained = len(self.unchained) + self.unchained_omitted
        return unchained + sum(group.records for group in self.groups)


@dataclass(slots=True)
class _Tail:
    """The last record seen of a chain: what the next one must link to."""

    seq: int
    hashes: tuple[str, ...]
    position: int


class ChainVerifier:
    """Verifies records fed one by one (memory: one entry per chain, not per record).

    ``max_problems`` bounds the problems kept (a file of garbage has one per line); the rest
    are only counted.
    """

    def __init__(self, *, max_problems: int | None = None) -> None:
        self._room = max_problems
        self._report = ChainReport()
        self._groups: dict[tuple[str, str], ChainGroup] = {}
        self._tails: dict[tuple[str, str], _Tail] = {}

    def add_line(self, position: int, line: str | bytes) -> None:
        """Verify one JSON line; blank lines are skipped."""
        parsed = parse_line(line)
        if parsed is None:
            return
        if isinstance(parsed, str):
            self._add(None, ChainProblem(position, None, None, parsed))
        else:
            self.add_record(position, parsed)

    def add_record(self, position: int, record: Mapping[str, Any]) -> None:
        """Verify the record at ``position`` against the last one of its chain."""
        chain = record.get("chain")
        if not isinstance(chain, str) or not chain:
            problem = chain_fields_problem(record) or "unchained record: no chain"
            self._add(None, ChainProblem(position, None, None, problem))
            return
        group = self._group(str(record.get("relay", "")), chain)
        group.records += 1
        malformed = chain_fields_problem(record)
        if malformed is not None:
            self._add(group, ChainProblem(position, None, _text(record.get("id")), malformed))
            return
        seq: int = record["seq"]
        ident: str = record["id"]
        actual, altered = _hash_problem(record)
        if altered is not None:
            self._add(group, ChainProblem(position, seq, ident, altered))
        key = (group.relay, chain)
        tail = self._tails.get(key)
        if tail is None:
            group.first_seq = seq
            link = _genesis_problem(record)
            if seq != 1:
                note = f"starts at seq {seq} (earlier records not in this file)"
                group.notes.append(ChainProblem(position, seq, ident, note))
        else:
            link = _continuity_problem(tail.hashes, tail.seq, tail.position, record)
        if link is not None:
            self._add(group, ChainProblem(position, seq, ident, link))
        group.last_seq = seq
        # The next record may link to the stored hash or, if this one was altered, to the
        # hash its content has: either way the alteration is reported once, here.
        stored: str = record["hash"]
        hashes = (stored,) if actual == stored else (stored, actual)
        self._tails[key] = _Tail(seq, hashes, position)

    def report(self) -> ChainReport:
        """Everything found so far."""
        return self._report

    def _add(self, group: ChainGroup | None, problem: ChainProblem) -> None:
        if self._room is not None:
            if self._room <= 0:
                if group is None:
                    self._report.unchained_omitted += 1
                else:
                    group.omitted += 1
                return
            self._room -= 1
        (self._report.unchained if group is None else group.problems).append(problem)

    def _group(self, relay: str, chain: str) -> ChainGroup:
        group = self._groups.get((relay, chain))
        if group is None:
            group = self._groups[(relay, chain)] = ChainGroup(relay, chain)
            self._report.groups.append(group)
        return group


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_line(line: str | bytes) -> dict[str, Any] | str | None:
    """A JSON line as a record; the problem text when it is not a JSON object; None when blank."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting
        return f"not JSON: {exc}"
    if not isinstance(value, dict):
        return f"unchained record: a JSON {type(value).__name__}, not an object"
    return value


def verify_records(records: Iterable[tuple[int, Mapping[str, Any]]]) -> ChainReport:
    """Verify (position, record) pairs, grouped by (relay, chain)."""
    verifier = ChainVerifier()
    for position, record in records:
        verifier.add_record(position, record)
    return verifier.report()


def verify_lines(
    lines: Iterable[str | bytes], *, first_position: int = 1, max_problems: int | None = None
) -> ChainReport:
    """Verify JSON lines; a line's position is its line number (from ``first_position``)."""
    verifier = ChainVerifier(max_problems=max_problems)
    for position, line in enumerate(lines, first_position):
        verifier.add_line(position, line)
    return verifier.report()
