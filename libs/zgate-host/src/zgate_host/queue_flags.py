"""The queue-discipline flags relay, agent and connector share (issue 14: fair sharing).

``--queue fq-codel|fifo``, ``--aqm-target MS`` and ``--aqm-interval MS`` set the settings
fields ``queue``, ``aqm_target_ms`` and ``aqm_interval_ms`` of each service's model (also
in YAML and as ZGATE_<SERVICE>_QUEUE etc.).
"""

from __future__ import annotations

import argparse

__all__ = ["QUEUE_DISCIPLINES", "add_queue_flags"]

#: The --queue values (zgate_proto.fq.DISCIPLINES, repeated here: zgate-host does not depend
#: on zgate-proto).
QUEUE_DISCIPLINES = ("fq-codel", "fifo")


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
