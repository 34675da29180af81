"""The stateless reset key file, and the front door's flags and settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from zgate_relay.cli import main
from zgate_relay.reset_key import RESET_KEY_SIZE, load_reset_key
from zgate_relay.settings import RelaySettings
from zgate_relay.startup import StartupError


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "reset.key"
    key = load_reset_key(path)
    assert len(key) == RESET_KEY_SIZE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_reset_key(path) == key  # a restart reads the same key


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "reset.key"
    load_reset_key(path)
    path.chmod(0o644)
    with pytest.raises(StartupError, match="chmod 600"):
        load_reset_key(path)


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "reset.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(StartupError, match="fewer than 32"):
        load_reset_key(path)


def test_the_key_lives_in_the_state_dir_unless_given_or_off(tmp_path: Path) -> None:
    assert RelaySettings(state_dir=tmp_path).reset_key == tmp_path / "reset.key"
    assert RelaySettings(state_dir=tmp_path, reset_key="off").reset_key is None
    other = tmp_path / "elsewhere.key"
    assert RelaySettings(state_dir=tmp_path, reset_key=other).reset_key == other


def test_front_door_defaults_are_the_new_behaviour(tmp_path: Path) -> None:
    settings = RelaySettings(state_dir=tmp_path)
    assert settings.retry == "auto"
    assert settings.max_half_open > 0 and settings.new_connections_per_source > 0
    assert settings.handshake_deadline > 0 and settings.udp_receive_buffer > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-half-open", "-1"],
        ["--new-connections-per-source", "-5"],
        ["--handshake-deadline", "-1"],
        ["--udp-receive-buffer", "-1"],
    ],
)
def test_bad_front_door_values_exit_2_with_one_line(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0].lstrip("-").replace("-", "_") in err[0]


def test_an_unknown_retry_mode_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--retry", "sometimes"])
    assert info.value.code == 2
    assert "--retry" in capsys.readouterr().err
