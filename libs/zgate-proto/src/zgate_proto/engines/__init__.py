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
#: The engine used when none is chosen (see docs/FAQ.md for the measurement behind it).
DEFAULT_ENGINE: Final = "aioquic"


def get_engine(name: str) -> QuicEngine:
    """The engine called ``name``; ValueError for an unknown name, ImportError when its
    adapter cannot load (say, the installed release is not the pinned one)."""
    if name not in ENGINES:
        raise ValueError(f"unknown QUIC engine {name!r}: choose one of {', '.join(ENGINES)}")
    module = importlib.import_module(f"zgate_proto.engines._{name}")
    engine: QuicEngine = module.ENGINE
    return engine
