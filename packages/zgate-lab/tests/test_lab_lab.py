"""zgate_lab.lab: the names a lab gives its namespaces, and only those, are recognised as a
lab's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_lab.lab import Lab, is_lab_namespace

# ---------------------------------------------------------------- lab names


@given(tag=st.from_regex(r"[0-9a-z]{1,12}", fullmatch=True), n=st.integers(1, 99))
def test_every_name_a_lab_gives_is_recognised(tag: str, n: int) -> None:
    lab = Lab(tag=tag, workdir=Path("/nonexistent"))
    assert is_lab_namespace(lab.relay_ns)
    assert is_lab_namespace(lab.inet_ns)
    assert is_lab_namespace(lab.agent_ns(n))


@pytest.mark.parametrize(
    "name",
    [
        "zr-",
        "zr-ABC",
        "zr-12-x",
        "xzr-12",
        "za-12",
        "za0-12",
        "za100-12",
        "zq-12",
        "zr12",
        "zr-1234567890123",
        "docker",
        "cni-1234",
        "zr-12 ",
    ],
)
def test_other_names_are_not_ours(name: str) -> None:
    assert not is_lab_namespace(name)


@pytest.mark.parametrize("tag", ["", "Upper", "with-dash", "x" * 13])
def test_lab_refuses_a_tag_it_could_not_find_again(tag: str) -> None:
    with pytest.raises(ValueError, match="lab tag"):
        Lab(tag=tag, workdir=Path("/nonexistent"))


# ---------------------------------------------------------------- QUIC engines


def _flag_value(cmd: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in a command line."""
    return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == flag]


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
def test_each_daemon_is_started_on_the_engine_asked_for(engine: str) -> None:
    lab = Lab(tag="t1", workdir=Path("/nonexistent"))
    commands = {
        "relay": lab.relay_command("--no-enforce", engine=engine),
        "agent": lab.agent_command(1, mode="stream", engine=engine, extra=["--no-fallback"]),
        "connector": lab.connector_command("site-a", engine=engine),
    }
    for who, cmd in commands.items():
        assert _flag_value(cmd, "--quic-engine") == [engine], who
    # The caller's own flags still come last, so they can override the lab's.
    assert commands["relay"][-1] == "--no-enforce"
    assert commands["agent"][-1] == "--no-fallback"
    assert _flag_value(commands["agent"], "--mode") == ["stream"]


def test_without_an_engine_the_services_choose_their_own() -> None:
    lab = Lab(tag="t1", workdir=Path("/nonexistent"))
    for cmd in (lab.relay_command(), lab.agent_command(2), lab.connector_command("site-a")):
        assert "--quic-engine" not in cmd
    assert _flag_value(lab.agent_command(2), "--cert")[0].endswith("clients/agent2.pem")
