"""The queue-discipline settings and flags relay, agent and connector share (issue 14: fair
sharing).

:class:`QueueSettings` holds the fields ``queue``, ``aqm_target_ms`` and ``aqm_interval_ms``
(each service's settings model inherits them, so they are also YAML keys and
ZGATE_<SERVICE>_QUEUE etc.); :func:`add_queue_flags` adds ``--queue fq-codel|fifo``,
``--aqm-target MS`` and ``--aqm-interval MS``, which set them.
"""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["QUEUE_DISCIPLINES", "QueueSettings", "add_queue_flags"]

#: The --queue values (zgate_proto.fq.DISCIPLINES, repeated here: zgate-host does not depend
#: on zgate-proto).
QUEUE_DISCIPLINES = ("fq-codel", "fifo")


class QueueSettings(BaseModel):
    """The queue-discipline fields of a service's settings model (a mixin)."""

    queue: Literal["fq-codel", "fifo"] = Field(
        "fq-codel",
        description="queue discipline where packets wait: fq-codel (a queue per flow, served "
        "in turn, new flows first, CoDel on each) or fifo (one tail-dropping queue, as before)",
    )
    aqm_target_ms: float = Field(
        5.0, gt=0, le=1000, description="fq-codel: standing delay per flow, milliseconds"
    )
    aqm_interval_ms: float = Field(
        100.0,
        gt=0,
        le=10000,
        description="fq-codel: how long the delay must exceed the target before CoDel drops, "
        "milliseconds",
    )


def add_queue_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add --queue, --aqm-target and --aqm-interval."""
    parser.add_argument(
        "--queue",
        choices=QUEUE_DISCIPLINES,
        help="how packets waiting to be sent (and, on the relay, to be processed) are "
        "queued: fq-codel = a queue per flow served in turn, new flows first, with CoDel "
        "keeping each one's standing delay near --aqm-target; fifo = one tail-dropping "
        "queue, as before (for measurements) [fq-codel]",
    )
    parser.add_argument(
        "--aqm-target",
        dest="aqm_target_ms",
        type=float,
        metavar="MS",
        help="fq-codel: standing delay each flow's queue may keep, milliseconds [5]",
    )
    parser.add_argument(
        "--aqm-interval",
        dest="aqm_interval_ms",
        type=float,
        metavar="MS",
        help="fq-codel: how long the delay must stay above the target before CoDel drops, "
        "milliseconds (about the flows' worst round trip) [100]",
    )
