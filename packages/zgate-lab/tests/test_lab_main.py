"""``zgate-lab``'s parser (zgate_lab.main): its commands, options and defaults; the operator
CLI does not carry them."""

from __future__ import annotations

import re

import pytest

from zgate_cli.main import main as zgate_main
from zgate_lab.main import build_parser, main

# ---------------------------------------------------------------- parsing


def test_help_lists_demo_and_down(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+demo\s", out, re.MULTILINE)
    assert re.search(r"^\s+down\s", out, re.MULTILINE)


def test_the_operator_cli_does_not_carry_the_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert zgate_main(["--help"]) == 0
    assert not re.search(r"^\s+lab\s", capsys.readouterr().out, re.MULTILINE)
    assert zgate_main(["demo"]) == 2


def test_demo_defaults_to_datagram_mode_without_keep() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.mode, args.keep) == ("datagram", False)
    args = build_parser().parse_args(["demo", "--mode", "stream", "--keep"])
    assert (args.mode, args.keep) == ("stream", True)


def test_demo_rejects_an_unknown_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--mode", "pigeon"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_lab_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_down_options() -> None:
    args = build_parser().parse_args(["down", "--tag", "d0a1b2c", "--dry-run"])
    assert (args.tag, args.dry_run) == ("d0a1b2c", True)
