"""QUIC engines behind one boundary (:mod:`zgate_proto.engines.base`).

``get_engine("aioquic")`` or ``get_engine("qh3")`` imports that engine's adapter only when
asked, so a broken or missing engine does not stop the other from working.
"""

from __future__ import annotations

import importlib
from typing import Final

from zgate_proto.engines.base import QuicEngine

__all__ = ["DEFAULT_ENGINE", "ENGINES", "get_engine"]

#: Every engine zgate has an adapter for, by its --quic-engine name.
ENGINES: Final = ("aioquic", "qh3")
#: The engine used when none is chosen: qh3, whose packet core is compiled, moved 2.1-2.4x
#: aioquic's single-stream TCP through the tunnel in the same runs of bench/tunnel.py
#: (docs/FAQ.md, bench/RESULTS.md). aioquic stays the design card's engine and the fallback.
DEFAULT_ENGINE: Final = "qh3"


def get_engine(name: str) -> QuicEngine:
    """The engine called ``name``; ValueError for an unknown name, ImportError when its
    adapter cannot load (say, the installed release is not the pinned one)."""
    if name not in ENGINES:
        raise ValueError(f"unknown QUIC engine {name!r}: choose one of {', '.join(ENGINES)}")
    module = importlib.import_module(f"zgate_proto.engines._{name}")
    engine: QuicEngine = module.ENGINE
    return engine
