"""``zgate ctl``: the operator's command line for the control plane, over its REST API only.

One module per command group; `client` speaks HTTP, `config` finds the URL and token,
`output` prints tables or the API's JSON.
"""

from __future__ import annotations

from . import adminlog, audit, clients, connectors, policy, relays, tokens
from .common import PROGRAM, SubParsers, connection_options
from .config import DEFAULT_URL, TOKEN_ENV, URL_ENV

__all__ = ["register"]


def register(groups: SubParsers) -> None:
    """Add the ``ctl`` command group to the top-level ``zgate`` parser."""
    ctl = groups.add_parser(
        "ctl",
        help="manage a control plane: policies, clients, connectors, relays, tokens, audit",
        description=f"Talk to a zgate control plane over its REST API. The URL comes from "
        f"--url, {URL_ENV}, the config file's url: or {DEFAULT_URL}; the token from --token, "
        f"--token-file, {TOKEN_ENV} or the config file's token:. Exit status: 0 done, 1 the "
        f"control plane refused or failed (or could not be reached), 2 usage or configuration "
        f"errors; `{PROGRAM} policy explain` exits 0 for allow and 1 for deny.",
        parents=[connection_options(leaf=False)],
    )
    commands = ctl.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in (policy, clients, connectors, relays, tokens, audit, adminlog):
        module.register(commands)
