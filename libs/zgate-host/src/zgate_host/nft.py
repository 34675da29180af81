"""The relay's egress NAT: one nftables table of its own, installed and removed atomically.

The python nftables bindings are not on PyPI, so this drives the `nft` binary with a script
on stdin (`nft -f -`): one script is one kernel transaction, all or nothing.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from zgate_host.errors import (
    NET_ADMIN_FIX,
    CommandFailed,
    HostError,
    InvalidArgument,
    PermissionRequired,
    ToolMissing,
)
from zgate_host.netns import run_in_netns
from zgate_host.tun import validate_ifname

__all__ = ["NFT", "NatTable", "run_nft"]

NFT = "nft"
_TIMEOUT = 30.0
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Stricter than the kernel: the name goes inside a quoted string in an nft script.
_NFT_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]+")


def run_nft(args: Sequence[str], *, script: str | None = None, netns: str | None = None) -> str:
    """Run `nft ARGS` (with `script` on stdin) and return its stdout.

    Raises CommandFailed carrying nft's stderr, PermissionRequired when nft was refused,
    ToolMissing when there is no nft to run.
    """
    argv = [NFT, *args]

    def call() -> subprocess.CompletedProcess[str]:
        # A process started from a thread inside a namespace starts in that namespace.
        return subprocess.run(
            argv, input=script, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )

    try:
        done = run_in_netns(netns, call)
    except FileNotFoundError:
        raise ToolMissing(
            f"{NFT} not found on PATH: install the nftables package "
            "(Debian/Ubuntu: apt-get install nftables)"
        ) from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{' '.join(argv)} did not finish within {_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        stderr = done.stderr.strip()
        if "Operation not permitted" in stderr:
            raise PermissionRequired(
                f"{' '.join(argv)}: {stderr.splitlines()[0] if stderr else 'refused'}: "
                f"needs CAP_NET_ADMIN: {NET_ADMIN_FIX}"
            )
        raise CommandFailed(
            f"{' '.join(argv)} failed (exit {done.returncode}): {stderr}",
            returncode=done.returncode,
            stderr=stderr,
        )
    return done.stdout


class NatTable:
    """An `inet` table that masquerades tunnel clients and lets tunnel traffic be forwarded.

    Owning a whole table keeps the relay's rules apart from everyone else's: install()
    replaces it wholesale and remove() deletes it, never touching other tables.
    """

    def __init__(self, name: str = "zgate_relay", *, netns: str | None = None) -> None:
        if not _TABLE_NAME.fullmatch(name):
            raise InvalidArgument(f"bad nftables table name {name!r}")
        self.name = name
        self.netns = netns

    def render(
        self,
        sources: Sequence[IPv4Network | IPv6Network],
        *,
        oifname: str | None = None,
        tun_name: str | None = None,
    ) -> str:
        """Return the nft script install() runs (useful for diagnostics and tests)."""
        table = f"inet {self.name}"
        lines = [
            # Declaring the table first makes the delete safe when it does not exist yet.
            f"table {table}",
            f"delete table {table}",
            f"table {table} {{",
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        ]
        out = ""
        if oifname is not None:
            out = f'oifname "{_ifname(oifname)}" '
        elif tun_name is not None:
            # Traffic handed back into the tunnel keeps the client's own address.
            out = f'oifname != "{_ifname(tun_name)}" '
        for family, nets in (("ip", _collapse(sources, 4)), ("ip6", _collapse(sources, 6))):
            if nets:
                lines.append(f"\t\t{family} saddr {{ {', '.join(nets)} }} {out}counter masquerade")
        lines.append("\t}")
        if tun_name is not None:
            tun = _ifname(tun_name)
            lines += [
                "\tchain forward {",
                "\t\ttype filter hook forward priority filter; policy accept;",
                f'\t\tiifname "{tun}" counter accept',
                f'\t\toifname "{tun}" counter accept',
                "\t}",
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def install(
        self,
        sources: Sequence[IPv4Network | IPv6Network],
        *,
        oifname: str | None = None,
        tun_name: str | None = None,
    ) -> None:
        """Replace the table (a stale one included) in one transaction.

        Packets from `sources` are masqueraded (only when leaving by `oifname`, if given,
        and never when going back into `tun_name`); the forward chain accepts traffic to
        and from `tun_name`.
        """
        script = self.render(sources, oifname=oifname, tun_name=tun_name)
        run_nft(["-f", "-"], script=script, netns=self.netns)

    def remove(self) -> None:
        """Delete the table; one that is not there is fine."""
        table = f"inet {self.name}"
        run_nft(["-f", "-"], script=f"table {table}\ndelete table {table}\n", netns=self.netns)

    def exists(self) -> bool:
        """True if the table is installed."""
        listing = run_nft(["list", "tables", "inet"], netns=self.netns)
        return f"table inet {self.name}" in listing.splitlines()

    def installed_ruleset(self) -> str:
        """The table as the kernel has it (`nft list table`), or "" when it is not installed."""
        if not self.exists():
            return ""
        return run_nft(["list", "table", "inet", self.name], netns=self.netns)

    def __repr__(self) -> str:
        return f"NatTable(name={self.name!r}, netns={self.netns!r})"


def _collapse(sources: Sequence[IPv4Network | IPv6Network], version: int) -> list[str]:
    # nft refuses overlapping intervals in one set, so merge them first.
    nets = [net for net in sources if net.version == version]
    if version == 4:
        v4 = [n for n in nets if isinstance(n, IPv4Network)]
        return [str(n) for n in ipaddress.collapse_addresses(v4)]
    v6 = [n for n in nets if isinstance(n, IPv6Network)]
    return [str(n) for n in ipaddress.collapse_addresses(v6)]


def _ifname(name: str) -> str:
    validate_ifname(name)
    if not _NFT_IFNAME.fullmatch(name):
        raise InvalidArgument(f"interface name {name!r} has characters unsafe in an nft rule")
    return name
