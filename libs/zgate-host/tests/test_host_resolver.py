"""The tunnel's name resolution: the pure decisions, and the file handling in a temporary
directory (resolv.conf, state directory and systemd-resolved's directory are parameters)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from zgate_host.resolver import (
    BACKUP_NAME,
    MANAGED_MARKER,
    Backup,
    FileState,
    HostResolver,
    Method,
    Recovery,
    ResolverError,
    choose_method,
    is_managed,
    nameservers,
    observe,
    recovery_for,
    relay_dns_servers,
    render_resolv_conf,
    resolved_commands,
)

V4 = ipaddress.IPv4Address("10.100.0.1")
V6 = ipaddress.IPv6Address("fd7a:7a67::1")
ORIGINAL = "# the host's own\nsearch corp.example\nnameserver 192.0.2.53\noptions edns0\n"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


class Box:
    """A temporary /etc, state directory and /run/systemd/resolve."""

    def __init__(self, tmp: Path) -> None:
        self.etc = tmp / "etc"
        self.etc.mkdir()
        self.conf = self.etc / "resolv.conf"
        self.state = tmp / "state"
        self.resolved = tmp / "run-resolve"
        self.mountinfo = tmp / "mountinfo"
        self.mountinfo.write_text("")
        self.commands: list[list[str]] = []

    def resolver(self, **kw: object) -> HostResolver:
        params: dict[str, object] = {
            "state_dir": self.state,
            "resolv_conf": self.conf,
            "resolved_dir": self.resolved,
            "mountinfo": self.mountinfo,
            "which": lambda name: None,
            "run": self.record,
        }
        params.update(kw)
        return HostResolver(**params)  # type: ignore[arg-type]

    def record(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(cmd))
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    @property
    def backup(self) -> Path:
        return self.state / BACKUP_NAME


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


# ----------------------------------------------------------------------- sans-IO


def test_relay_dns_servers_follow_the_pool_convention() -> None:
    # Host addresses in the relay's default pools: its first addresses.
    assert relay_dns_servers([net("10.100.3.7/32"), net("fd7a:7a67::9/128")]) == [V4, V6]
    # A prefix says the pool itself.
    assert relay_dns_servers([net("10.200.0.0/24")]) == [ipaddress.ip_address("10.200.0.1")]
    # Outside the default pools a host address tells nothing; configured servers win.
    assert relay_dns_servers([net("172.16.0.9/32")]) == []
    other = ipaddress.ip_address("172.16.0.1")
    assert relay_dns_servers([net("172.16.0.9/32")], [other, other]) == [other]


def test_render_keeps_search_and_options_and_marks_the_file() -> None:
    text = render_resolv_conf([V4, V6], ORIGINAL, device="tun0")
    assert is_managed(text) and text.startswith(MANAGED_MARKER)
    assert nameservers(text) == ["10.100.0.1", "fd7a:7a67::1"]
    assert "search corp.example" in text and "options edns0" in text
    # Split tunnel: the host's servers after the relay's (resolved's stub is not one).
    split = render_resolv_conf(
        [V4], ORIGINAL + "nameserver 127.0.0.53\n", device="t", fallback=True
    )
    assert nameservers(split) == ["10.100.0.1", "192.0.2.53"]
    assert not is_managed(ORIGINAL) and not is_managed(None)


def test_choose_method_needs_resolved_running_its_tool_and_its_stub() -> None:
    stub = FileState("link", "nameserver 127.0.0.53\n", "../run/systemd/resolve/stub-resolv.conf")
    plain = FileState("file", ORIGINAL)
    assert choose_method(resolved_running=True, resolvectl="/bin/resolvectl", resolv_conf=stub) is (
        Method.RESOLVED
    )
    for running, tool, conf in [
        (False, "/bin/resolvectl", stub),
        (True, None, stub),
        (True, "/bin/resolvectl", plain),  # e.g. a namespace's own resolv.conf
    ]:
        assert (
            choose_method(resolved_running=running, resolvectl=tool, resolv_conf=conf)
            is Method.RESOLV_CONF
        )


def test_resolved_commands_full_and_split() -> None:
    full = resolved_commands("resolvectl", "tun0", [V4], [])
    assert full == [
        ["resolvectl", "dns", "tun0", "10.100.0.1"],
        ["resolvectl", "domain", "tun0", "~."],
        ["resolvectl", "default-route", "tun0", "true"],
    ]
    split = resolved_commands("resolvectl", "tun0", [V4], ["corp.internal", "lab."])
    assert split[1] == ["resolvectl", "domain", "tun0", "~corp.internal", "~lab"]
    assert split[2][-1] == "false"


def test_recovery_decisions() -> None:
    original = FileState("file", ORIGINAL, mode=0o644)
    ours = render_resolv_conf([V4], ORIGINAL, device="tun0")
    backup = Backup("/etc/resolv.conf", original, FileState("file", ours).digest or "")
    assert recovery_for(None, original) is Recovery.NOTHING
    assert recovery_for(backup, FileState("file", ours)) is Recovery.RESTORE
    assert recovery_for(backup, original) is Recovery.ALREADY_ORIGINAL
    assert recovery_for(backup, FileState("file", "nameserver 9.9.9.9\n")) is Recovery.FOREIGN
    assert recovery_for(backup, FileState("missing")) is Recovery.FOREIGN
    assert Backup.from_json(backup.to_json()) == backup
    fields = '"path": "p", "content": null, "mode": null, "written": ""'
    for broken in [
        '{"kind": "file"}',
        "[1]",
        "{",
        '{"kind": "link", "target": null, ' + fields + "}",
        '{"kind": "file", "target": null, ' + fields + "}",
        "[" * 100_000,  # nested too deeply for json.loads: RecursionError (seen writing fuzz_dns)
    ]:
        with pytest.raises(ValueError):
            Backup.from_json(broken)


# ---------------------------------------------------------------------------- I/O


def test_write_and_restore_a_file(box: Box, caplog: pytest.LogCaptureFixture) -> None:
    box.conf.write_text(ORIGINAL)
    box.conf.chmod(0o640)
    r = box.resolver()
    caplog.set_level(logging.INFO, "zgate.dns")
    assert r.apply("tun0", [V4, V6]) is Method.RESOLV_CONF
    text = box.conf.read_text()
    assert is_managed(text) and nameservers(text) == ["10.100.0.1", "fd7a:7a67::1"]
    assert box.backup.exists() and (box.backup.stat().st_mode & 0o777) == 0o600
    assert r.written_how == "atomic"
    assert r.status()["where"] == f"{box.conf} (managed, atomic)"
    # A reconnect with the same servers changes nothing, with new ones rewrites.
    r.apply("tun0", [V4, V6])
    r.apply("tun0", [V4])
    assert nameservers(box.conf.read_text()) == ["10.100.0.1"]
    r.restore()
    assert box.conf.read_text() == ORIGINAL
    assert (box.conf.stat().st_mode & 0o777) == 0o640
    assert not box.backup.exists()
    assert [p.name for p in box.etc.iterdir()] == ["resolv.conf"]  # no temporary left
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("names resolve through the tunnel" in m for m in messages)
    assert any("restored the original" in m for m in messages)
    r.restore()  # idempotent
    assert box.conf.read_text() == ORIGINAL


def test_a_symlink_is_replaced_by_a_file_and_comes_back(box: Box) -> None:
    target = box.etc / "stub-resolv.conf"
    target.write_text(ORIGINAL)
    box.conf.symlink_to("stub-resolv.conf")
    r = box.resolver()
    r.apply("tun0", [V4])
    assert not box.conf.is_symlink() and is_managed(box.conf.read_text())
    assert target.read_text() == ORIGINAL  # the link's target is untouched
    r.restore()
    assert box.conf.is_symlink() and os.readlink(box.conf) == "stub-resolv.conf"
    assert box.conf.read_text() == ORIGINAL


def test_a_link_to_a_mount_point_is_written_through(box: Box) -> None:
    """ip netns exec mounts the namespace's file over the link's target: the link (the
    host's) stays, the mounted file is written in place and restored."""
    target = box.etc / "stub-resolv.conf"
    target.write_text(ORIGINAL)
    box.conf.symlink_to("stub-resolv.conf")
    box.mountinfo.write_text(f"36 35 98:0 /netns/ns1/resolv.conf {target} rw - ext4 /dev/x rw\n")
    r = box.resolver()
    r.apply("tun0", [V4])
    assert box.conf.is_symlink() and is_managed(target.read_text())
    r.restore()
    assert box.conf.is_symlink() and target.read_text() == ORIGINAL


def test_a_missing_resolv_conf_is_missing_again_after(box: Box) -> None:
    r = box.resolver()
    r.apply("tun0", [V4])
    assert is_managed(box.conf.read_text())
    r.restore()
    assert not box.conf.exists()


def test_a_bind_mount_is_rewritten_in_place(box: Box) -> None:
    """rename() onto a mount point fails with EBUSY: the file is rewritten in place (same
    inode), for writing and for restoring."""
    box.conf.write_text(ORIGINAL)
    inode = box.conf.stat().st_ino

    def rename(src: str, dst: str) -> None:
        if Path(dst) == box.conf:
            raise OSError(errno.EBUSY, "Device or resource busy")
        os.rename(src, dst)

    r = box.resolver(rename=rename)
    r.apply("tun0", [V4])
    assert is_managed(box.conf.read_text()) and box.conf.stat().st_ino == inode
    assert r.written_how == "in place"
    r.restore()
    assert box.conf.read_text() == ORIGINAL and box.conf.stat().st_ino == inode
    assert sorted(p.name for p in box.etc.iterdir()) == ["resolv.conf"]


def test_crash_recovery_on_the_next_start(box: Box) -> None:
    box.conf.write_text(ORIGINAL)
    box.resolver().apply("tun0", [V4])  # ... and the agent is killed: no restore
    assert box.backup.exists()
    assert box.resolver().recover() is Recovery.RESTORE
    assert box.conf.read_text() == ORIGINAL and not box.backup.exists()
    assert box.resolver().recover() is Recovery.NOTHING


def test_crash_recovery_restores_a_symlink(box: Box) -> None:
    (box.etc / "nm-resolv.conf").write_text(ORIGINAL)
    box.conf.symlink_to("nm-resolv.conf")
    box.resolver().apply("tun0", [V4])
    assert box.resolver().recover() is Recovery.RESTORE
    assert os.readlink(box.conf) == "nm-resolv.conf"


def test_a_file_changed_since_the_crash_is_left_alone(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    box.conf.write_text(ORIGINAL)
    box.resolver().apply("tun0", [V4])
    box.conf.write_text("nameserver 198.51.100.53\n")  # DHCP, the admin, NetworkManager...
    caplog.set_level(logging.INFO, "zgate.dns")
    assert box.resolver().recover() is Recovery.FOREIGN
    assert box.conf.read_text() == "nameserver 198.51.100.53\n"
    assert not box.backup.exists()
    assert any("left as it is" in rec.getMessage() for rec in caplog.records)


def test_a_file_changed_while_running_is_left_alone_on_exit(box: Box) -> None:
    box.conf.write_text(ORIGINAL)
    r = box.resolver()
    r.apply("tun0", [V4])
    box.conf.write_text("nameserver 198.51.100.53\n")
    r.restore()
    assert box.conf.read_text() == "nameserver 198.51.100.53\n"
    assert not box.backup.exists()


def test_a_crash_between_backup_and_write_leaves_the_original(box: Box) -> None:
    box.conf.write_text(ORIGINAL)

    def rename(src: str, dst: str) -> None:
        if Path(dst) == box.conf:
            raise OSError(errno.EIO, "Input/output error")
        os.rename(src, dst)

    with pytest.raises(ResolverError, match=f"cannot write {box.conf}"):
        box.resolver(rename=rename).apply("tun0", [V4])
    assert box.conf.read_text() == ORIGINAL and not box.backup.exists()
    # And a backup that outlived such a crash is recognised as the original's.
    backup = Backup(str(box.conf), observe(box.conf), "0" * 64)
    box.state.mkdir(exist_ok=True)
    box.backup.write_text(backup.to_json())
    assert box.resolver().recover() is Recovery.ALREADY_ORIGINAL
    assert box.conf.read_text() == ORIGINAL and not box.backup.exists()


def test_a_read_only_etc_is_an_error_naming_the_file(box: Box) -> None:
    box.conf.write_text(ORIGINAL)

    def rename(src: str, dst: str) -> None:
        if Path(dst) == box.conf:
            raise OSError(errno.EROFS, "Read-only file system")
        os.rename(src, dst)

    r = box.resolver(rename=rename)
    with pytest.raises(ResolverError, match=f"cannot write {box.conf}: Read-only file system"):
        r.apply("tun0", [V4])
    assert box.conf.read_text() == ORIGINAL and not box.backup.exists()
    assert r.method is None
    r.restore()  # nothing to restore
    assert box.conf.read_text() == ORIGINAL


def test_a_state_dir_that_cannot_be_made_is_an_error(box: Box, tmp_path: Path) -> None:
    box.conf.write_text(ORIGINAL)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResolverError, match="cannot save the resolver backup"):
        box.resolver(state_dir=blocker / "state").apply("tun0", [V4])
    assert box.conf.read_text() == ORIGINAL


def test_systemd_resolved_gets_per_link_dns(box: Box) -> None:
    box.resolved.mkdir()
    box.conf.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    r = box.resolver(which=lambda name: f"/usr/bin/{name}")
    assert r.apply("zgate-agent0", [V4], ["corp.internal"]) is Method.RESOLVED
    assert box.commands == [
        ["/usr/bin/resolvectl", "dns", "zgate-agent0", "10.100.0.1"],
        ["/usr/bin/resolvectl", "domain", "zgate-agent0", "~corp.internal"],
        ["/usr/bin/resolvectl", "default-route", "zgate-agent0", "false"],
    ]
    assert r.status()["where"] == "systemd-resolved on zgate-agent0"
    assert box.conf.read_text().startswith("nameserver 127.0.0.53")  # untouched
    r.restore()
    assert box.commands[-1] == ["/usr/bin/resolvectl", "revert", "zgate-agent0"]
    assert not box.backup.exists()


def test_a_resolvectl_failure_falls_back_to_resolv_conf(box: Box) -> None:
    box.resolved.mkdir()
    box.conf.write_text("nameserver 127.0.0.53\n")

    def refuse(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(cmd), 1, "", "Failed to resolve interface")

    r = box.resolver(which=lambda name: f"/usr/bin/{name}", run=refuse)
    assert r.apply("tun0", [V4]) is Method.RESOLV_CONF
    assert nameservers(box.conf.read_text()) == ["10.100.0.1"]
    r.restore()
    assert box.conf.read_text() == "nameserver 127.0.0.53\n"
