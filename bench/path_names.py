"""The names of bench/tunnel.py's paths, and the ratios reported between them.

A zgate path is named after its packet mode and relay set-up, and, since the data path runs on
more than one QUIC engine, after the engine in brackets: `zgate-datagram[qh3]`,
`zgate-stream[aioquic]`, `zgate-datagram-noenforce[qh3]` (bench/packet_path.py names its
stages the same way: `quic-datagram[qh3]`). Result files written before the engine dimension
name them without brackets (`zgate-datagram`); those names are kept as they are, never
relabelled, so summarize.py reads old and new files alike without claiming an engine an old
run did not record.

The ratios follow from which paths a run measured, so tunnel.py (which reports them) and
summarize.py (which pools them over runs) derive them from the same function. This module
imports nothing heavy: summarize.py must not need the lab.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What every zgate path is compared with.
WIREGUARD = "wireguard-go"
VETH = "veth"
#: The zgate paths that carry the whole benchmark (the others measure enforcement).
MODES = ("zgate-datagram", "zgate-stream")
#: The engine the others are compared with in the `[engine]/[reference]` ratios: the one
#: zgate started on.
REFERENCE_ENGINE = "aioquic"
#: Enforcement's ratios: (label prefix, enforcing path, path without enforcement).
ENFORCEMENT_RATIOS = (
    ("allow-all/noenforce", "zgate-datagram", "zgate-datagram-noenforce"),
    ("policy1k/noenforce", "zgate-datagram-policy1k", "zgate-datagram-noenforce"),
)

#: Fair queueing's ratio (issue 14): the default fq-codel against --queue fifo.
QUEUE_RATIOS = (("fq-codel/fifo", "zgate-datagram", "zgate-datagram-fifo"),)

_NAME = re.compile(r"(?P<base>[a-z0-9-]+)(?:\[(?P<engine>[a-z0-9]+)\])?")


def split(name: str) -> tuple[str, str | None]:
    """A path name's base and engine: `zgate-stream[qh3]` -> ("zgate-stream", "qh3"),
    `veth` -> ("veth", None); ValueError for anything else."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a path name: {name!r}")
    return match["base"], match["engine"]


def _engine(name: str) -> str | None:
    """The engine in a path name; None without one, or for a name this module does not
    know how to read (an old file's may be anything: its ratios then follow the
    unbracketed names)."""
    try:
        return split(name)[1]
    except ValueError:
        return None


def named(base: str, engine: str | None) -> str:
    """The path name of ``base`` on ``engine`` (just ``base`` without one); ratio labels are
    tagged the same way (`allow-all/noenforce[qh3]`)."""
    return base if engine is None else f"{base}[{engine}]"


def ratio_pairs(paths: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Every ratio (label -> (top path, bottom path)) whose two paths are among ``paths``.

    Per engine (or for unbracketed names of old files, as before): each mode against
    wireguard-go and against veth, stream against datagram, enforcement's ratios; then
    wireguard-go against veth, and each other engine against REFERENCE_ENGINE per mode.
    """
    present = list(dict.fromkeys(paths))
    have = set(present)
    engines = list(dict.fromkeys(_engine(p) for p in present if p.startswith("zgate-")))
    candidates: list[tuple[str, str, str]] = []
    for engine in engines:
        for mode in MODES:
            path = named(mode, engine)
            candidates.append((f"{path}/{WIREGUARD}", path, WIREGUARD))
        for mode in MODES:
            path = named(mode, engine)
            candidates.append((f"{path}/{VETH}", path, VETH))
        datagram, stream = (named(mode, engine) for mode in MODES)
        candidates.append((f"{stream}/{datagram}", stream, datagram))
        for label, top, bottom in (*ENFORCEMENT_RATIOS, *QUEUE_RATIOS):
            candidates.append((named(label, engine), named(top, engine), named(bottom, engine)))
    candidates.append((f"{WIREGUARD}/{VETH}", WIREGUARD, VETH))
    for engine in engines:
        if engine is None or engine == REFERENCE_ENGINE:
            continue
        for mode in MODES:
            top, bottom = named(mode, engine), named(mode, REFERENCE_ENGINE)
            candidates.append((f"{top}/{bottom}", top, bottom))
    return {
        label: (top, bottom) for label, top, bottom in candidates if top in have and bottom in have
    }
