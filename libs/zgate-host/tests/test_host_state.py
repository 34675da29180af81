"""zgate_host.state: the state directory a service uses when none is configured, and the checks
that name the directory and the flag to fix when it cannot be used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zgate_host import HostError
from zgate_host.state import SYSTEM_STATE_ROOT, StateDirError, default_state_dir, ensure_state_dir


def test_root_uses_the_system_directory_whatever_the_environment() -> None:
    env = {"XDG_STATE_HOME": "/elsewhere", "HOME": "/root"}
    assert default_state_dir("relay", euid=0, environ=env) == SYSTEM_STATE_ROOT / "relay"
    assert Path("/var/lib/zgate") == SYSTEM_STATE_ROOT


def test_other_users_use_xdg_state_home_then_home() -> None:
    xdg = {"XDG_STATE_HOME": "/xdg", "HOME": "/home/ann"}
    assert default_state_dir("agent", euid=1000, environ=xdg) == Path("/xdg/zgate/agent")
    home = {"XDG_STATE_HOME": "", "HOME": "/home/ann"}
    expected = Path("/home/ann/.local/state/zgate/connector")
    assert default_state_dir("connector", euid=1000, environ=home) == expected


def test_without_home_the_users_own_home_is_looked_up() -> None:
    got = default_state_dir("agent", euid=1000, environ={})
    assert got == Path("~").expanduser() / ".local" / "state" / "zgate" / "agent"
    assert got.is_absolute()


def test_ensure_creates_it_private_with_its_parents(tmp_path: Path) -> None:
    wanted = tmp_path / "a" / "b" / "state"
    got = ensure_state_dir(wanted)
    assert got == wanted and got.is_dir()
    assert stat.S_IMODE(got.stat().st_mode) & 0o077 == 0


def test_ensure_returns_an_absolute_path_and_leaves_an_existing_mode_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    got = ensure_state_dir(Path("shared"))
    assert got == existing and got.is_absolute()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755


def test_a_file_in_the_way_is_named_with_the_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("")
    with pytest.raises(StateDirError, match=r"exists and is not a directory \(--data\)$"):
        ensure_state_dir(blocker, flag="--data")
    with pytest.raises(StateDirError, match="cannot create the state directory"):
        ensure_state_dir(blocker / "below")


def test_an_unwritable_directory_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root may write anywhere: the refusal of access(2) is made up for the directory only.
    target = tmp_path / "state"
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int) -> bool:
        return False if Path(path) == target else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(StateDirError, match=r"not writable by this user.*--state-dir") as caught:
        ensure_state_dir(target)
    assert isinstance(caught.value, HostError)
