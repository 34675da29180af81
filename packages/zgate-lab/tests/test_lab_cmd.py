"""``zgate-lab demo`` and ``zgate-lab down`` (zgate_lab.lab_cmd): refusals, the demo's step runner
and clean-up, ``down``, and (as root) the demo itself end to end."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zgate_lab import lab as lab_module
from zgate_lab import lab_cmd
from zgate_lab.lab import VENV_BIN, Lab, have_tools, wait_until
from zgate_lab.main import main

LAB_NAME = re.compile(r"\b(?:zr|zi|za\d+)-d[0-9a-f]{6}\b")


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _e2e_skip_reason() -> str | None:
    # Under ZGATE_REQUIRE_E2E=1 (CI) nothing is skipped, as in tests/e2e.
    if os.environ.get("ZGATE_REQUIRE_E2E") == "1":
        return None
    if reason := have_tools():
        return reason
    if not (VENV_BIN / "serve").exists() or not (VENV_BIN / "zgate-agent").exists():
        return "needs the relay and agent packages installed"
    return None


_E2E_SKIP = _e2e_skip_reason()


# ---------------------------------------------------------------- refusals


def _never_build() -> Lab:
    raise AssertionError("the lab must not be built")


@pytest.mark.parametrize("command", ["demo", "down"])
def test_refuses_without_root_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    monkeypatch.setattr(lab_cmd, "_is_root", lambda: False)
    monkeypatch.setattr(lab_cmd, "_new_lab", _never_build)
    monkeypatch.setattr(lab_cmd, "lab_namespaces", lambda tag=None: pytest.fail("listed"))
    assert main([command]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"zgate-lab {command}: needs root" in captured.err


@pytest.mark.parametrize(
    ("present", "named"),
    [
        ((), "zgate-agent and zgate-relay"),
        (("serve",), "zgate-agent"),
        (("zgate-agent",), "zgate-relay"),
    ],
)
def test_demo_says_it_needs_the_relay_and_agent_packages(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    present: Sequence[str],
    named: str,
) -> None:
    for script in present:
        (tmp_path / script).touch()
    monkeypatch.setattr(lab_cmd, "_is_root", lambda: True)
    monkeypatch.setattr(lab_cmd, "VENV_BIN", tmp_path)
    monkeypatch.setattr(lab_cmd, "_new_lab", _never_build)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs the relay and agent packages" in err
    assert f"({named})" in err


def test_demo_names_a_missing_host_tool(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for script in ("serve", "zgate-agent"):
        (tmp_path / script).touch()
    monkeypatch.setattr(lab_cmd, "_is_root", lambda: True)
    monkeypatch.setattr(lab_cmd, "VENV_BIN", tmp_path)
    monkeypatch.setattr(lab_cmd, "_new_lab", _never_build)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nft" else "/x")
    assert main(["demo"]) == 1
    assert "needs the 'nft' command (Debian package nftables)" in capsys.readouterr().err


# ---------------------------------------------------------------- lab down, faked


@dataclass
class FakeIp:
    """Answers `ip netns list|pids|del` from a fixed set of namespaces."""

    names: list[str]
    pids: dict[str, list[int]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def __call__(self, cmd: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        out = ""
        match list(cmd):
            case ["ip", "netns", "list"]:
                out = "".join(f"{n} (id: {i})\n" for i, n in enumerate(self.names))
            case ["ip", "netns", "pids", name]:
                out = "".join(f"{p}\n" for p in self.pids.get(name, []))
            case ["ip", "netns", "del", name]:
                self.deleted.append(name)
            case _:
                pytest.fail(f"unexpected command {cmd}")
        return subprocess.CompletedProcess(list(cmd), 0, out, "")


MIXED = [
    "zr-12340",
    "zi-12340",
    "za1-12340",
    "za2-d0a1b2c",
    "zr-d0a1b2c",
    "docker-1",
    "zr-",
    "myns",
    "zr-12340-old",
    "za-1",
]


@pytest.fixture
def fake_ip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeIp:
    fake = FakeIp(list(MIXED), pids={"za1-12340": [4242, 4243]})
    monkeypatch.setattr(lab_cmd, "run", fake)
    monkeypatch.setattr(lab_cmd, "_is_root", lambda: True)
    monkeypatch.setattr(lab_module, "LAB_RUN_DIR", tmp_path / "run")
    return fake


def _record_owner(tag: str, pid: int, workdir: Path, *, temporary: bool = True) -> None:
    lab_module.LAB_RUN_DIR.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "workdir": str(workdir), "temporary_workdir": temporary}
    lab_module.owner_file(tag).write_text(json.dumps(record))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_down_leaves_a_running_lab_alone_unless_forced(
    fake_ip: FakeIp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(lab_cmd, "_stop_processes", lambda pids: None)
    with subprocess.Popen(["sleep", "60"]) as owner:
        try:
            _record_owner("d0a1b2c", owner.pid, tmp_path / "work")
            assert main(["down"]) == 0
            assert sorted(fake_ip.deleted) == ["za1-12340", "zi-12340", "zr-12340"]
            out = capsys.readouterr().out
            assert f"lab d0a1b2c is in use by its owner (pid {owner.pid}): left alone" in out
            assert lab_module.owner_file("d0a1b2c").exists()
            assert main(["down", "--force", "--tag", "d0a1b2c"]) == 0
            assert "za2-d0a1b2c" in fake_ip.deleted and "zr-d0a1b2c" in fake_ip.deleted
            assert not lab_module.owner_file("d0a1b2c").exists()
        finally:
            owner.kill()


def test_down_removes_an_abandoned_labs_temporary_pki(
    fake_ip: FakeIp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(lab_cmd, "_stop_processes", lambda pids: None)
    work = tmp_path / "zgate-demo-x"
    (work / "pki").mkdir(parents=True)
    (work / "pki" / "ca.key").write_text("secret")
    kept = tmp_path / "tests-own"
    kept.mkdir()
    _record_owner("d0a1b2c", _dead_pid(), work)
    _record_owner("12340", _dead_pid(), kept, temporary=False)
    assert main(["down"]) == 0
    assert not work.exists()
    assert kept.is_dir()  # a workdir the lab did not make is never deleted
    assert f"removed its temporary files {work} (PKI, logs)" in capsys.readouterr().out
    assert not lab_module.owner_file("d0a1b2c").exists()


def test_down_removes_only_lab_namespaces(
    fake_ip: FakeIp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stopped: list[list[int]] = []
    monkeypatch.setattr(lab_cmd, "_stop_processes", lambda pids: stopped.append(list(pids)))
    assert main(["down"]) == 0
    assert sorted(fake_ip.deleted) == sorted(
        ["zr-12340", "zi-12340", "za1-12340", "za2-d0a1b2c", "zr-d0a1b2c"]
    )
    assert stopped == [[4242, 4243]]
    assert "removed za1-12340 (stopped 2 processes)" in capsys.readouterr().out


def test_down_with_a_tag_removes_that_lab_only(
    fake_ip: FakeIp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_cmd, "_stop_processes", lambda pids: None)
    assert main(["down", "--tag", "d0a1b2c"]) == 0
    assert sorted(fake_ip.deleted) == ["za2-d0a1b2c", "zr-d0a1b2c"]


def test_down_dry_run_removes_nothing(
    fake_ip: FakeIp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_cmd, "_stop_processes", lambda pids: pytest.fail("stopped"))
    assert main(["down", "--dry-run"]) == 0
    assert fake_ip.deleted == []
    assert "would remove za1-12340 (2 processes in it)" in capsys.readouterr().out


def test_down_with_nothing_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab_cmd, "run", FakeIp(["myns", "docker-1"]))
    monkeypatch.setattr(lab_cmd, "_is_root", lambda: True)
    assert main(["down"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


# ---------------------------------------------------------------- the demo's flow, faked


@dataclass
class FakeLab:
    """Stands in for Lab: records its teardown."""

    workdir: Path
    namespaces: list[str] = field(default_factory=lambda: ["zr-dfake00"])
    torn_down: bool = False
    relay_ns: str = "zr-dfake00"
    tag: str = "dfake00"

    def agent_ns(self, n: int) -> str:
        return f"za{n}-dfake00"

    def teardown(self) -> None:
        self.torn_down = True
        self.namespaces.clear()


def _fake_demo(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    steps: list[tuple[str, Callable[[], list[str]]]],
) -> FakeLab:
    workdir = tmp_path / "work"
    workdir.mkdir()
    lab = FakeLab(workdir)

    class FakeDemo:
        def __init__(self, lab: object, mode: str, engine: str | None = None) -> None:
            _demos_made.append((mode, engine))

        def steps(self) -> list[tuple[str, Callable[[], list[str]]]]:
            return steps

    monkeypatch.setattr(lab_cmd, "_missing_prerequisite", lambda command: None)
    monkeypatch.setattr(lab_cmd, "_new_lab", lambda: lab)
    monkeypatch.setattr(lab_cmd, "_Demo", FakeDemo)
    monkeypatch.setattr(lab_cmd, "lab_namespaces", lambda tag=None: [])
    return lab


#: (mode, engine) of each demo the fake made: what `zgate-lab demo` asked for.
_demos_made: list[tuple[str, str | None]] = []


def _fails() -> list[str]:
    raise lab_cmd.StepFailedError("ping failed:\n3 packets lost\nthird line")


def test_demo_stops_at_the_failing_step_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[str] = []

    def first() -> list[str]:
        ran.append("first")
        return ["detail one"]

    def third() -> list[str]:
        ran.append("third")
        return []

    lab = _fake_demo(
        monkeypatch, tmp_path, [("First", first), ("Second", _fails), ("Third", third)]
    )
    (lab.workdir / "relay.log").write_text("the relay's log\n")
    assert main(["demo"]) == 1
    out = capsys.readouterr().out
    assert ran == ["first"]
    assert lab.torn_down
    assert "[1/3] First ... ok" in out and "      detail one" in out
    assert "[2/3] Second ... FAILED" in out
    assert "      third line" in out
    assert "demo FAILED at step 2 (Second): ping failed: 3 packets lost\n" in out
    assert f"logs: {lab.workdir} (relay.log)" in out
    assert lab.workdir.exists(), "the logs of a failed demo are kept"
    assert "demo passed" not in out


def test_demo_passes_and_removes_its_work_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = _fake_demo(monkeypatch, tmp_path, [("Only", lambda: ["fine"])])
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert lab.torn_down
    assert out.rstrip().endswith(
        "demo passed: ping, IPv4 and IPv6 downloads through the tunnel, checksums OK"
    )
    assert not lab.workdir.exists()


@pytest.mark.parametrize(
    ("argv", "made"),
    [
        ([], ("datagram", None)),
        (["--quic-engine", "qh3"], ("datagram", "qh3")),
        (["--mode", "stream", "--quic-engine", "aioquic"], ("stream", "aioquic")),
    ],
)
def test_demo_runs_on_the_quic_engine_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], made: tuple[str, str | None]
) -> None:
    _fake_demo(monkeypatch, tmp_path, [("Only", lambda: ["fine"])])
    _demos_made.clear()
    assert main(["demo", *argv]) == 0
    assert _demos_made == [made]


def test_demo_refuses_an_unknown_quic_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quic-engine", "picoquic"]) == 2
    assert "invalid choice: 'picoquic'" in capsys.readouterr().err


def test_demo_fails_when_clean_up_leaves_a_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_demo(monkeypatch, tmp_path, [("Only", lambda: [])])
    monkeypatch.setattr(lab_cmd, "lab_namespaces", lambda tag=None: ["zr-dfake00"])
    assert main(["demo"]) == 1
    out = capsys.readouterr().out
    assert "clean-up left namespaces behind: zr-dfake00" in out
    assert "zgate-lab down --tag dfake00" in out


def _interrupted() -> list[str]:
    raise KeyboardInterrupt


def _terminated() -> list[str]:
    os.kill(os.getpid(), signal.SIGTERM)
    pytest.fail("SIGTERM did not interrupt the step")


@pytest.mark.parametrize("step", [_interrupted, _terminated])
def test_ctrl_c_or_sigterm_still_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    step: Callable[[], list[str]],
) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    lab = _fake_demo(monkeypatch, tmp_path, [("Slow", step)])
    assert main(["demo"]) == 130
    assert lab.torn_down
    assert "interrupted; logs kept in" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is previous


def test_keep_prints_how_to_poke_and_waits_for_enter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = _fake_demo(monkeypatch, tmp_path, [("Only", lambda: [])])
    waited: list[bool] = []

    def enter() -> str:
        waited.append(lab.torn_down)
        return ""

    monkeypatch.setattr("builtins.input", enter)
    assert main(["demo", "--keep"]) == 0
    out = capsys.readouterr().out
    assert waited == [False], "the lab stays up until Enter"
    assert lab.torn_down
    assert "ip netns exec za1-dfake00 ping 203.0.113.10" in out


def test_metrics_parsing() -> None:
    text = (
        "# HELP zgate_relay_sessions Live CONNECT-IP sessions.\n"
        "zgate_relay_sessions 1.0\n"
        "zgate_relay_sessions_opened_total 3.0\n"
        'zgate_relay_packets_total{direction="to_egress"} 12.0\n'
        'zgate_relay_packets_total{direction="from_egress"} 7.0\n'
        'zgate_relay_packets_created{direction="to_egress"} 1.7e9\n'
    )
    assert lab_cmd._plain(text, "zgate_relay_sessions") == 1.0
    assert lab_cmd._plain(text, "zgate_relay_missing") == 0.0
    assert lab_cmd._labelled(text, "zgate_relay_packets_total") == {
        "to_egress": 12.0,
        "from_egress": 7.0,
    }


# ---------------------------------------------------------------- as root, for real


@pytest.mark.root
@pytest.mark.needs(root=True, tools=("ip",), reason="network namespaces")
def test_down_stops_processes_and_deletes_only_that_labs_namespaces(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = "t" + secrets.token_hex(4)
    ours = [f"zr-{tag}", f"za1-{tag}"]
    decoys = [f"zx-{tag}", f"zra-{tag}"]  # end in the tag, but not named like a lab's
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        for name in ours + decoys:
            subprocess.run(["ip", "netns", "add", name], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", ours[1], "sleep", "300"])
        wait_until(lambda: bool(lab_cmd._pids_in(ours[1])), 10, "sleep to enter the namespace")
        assert main(["down", "--tag", tag]) == 0
        assert sleeper.wait(timeout=15) == -signal.SIGTERM
        assert f"removed za1-{tag} (stopped 1 process)" in capsys.readouterr().out
        names = _netns_names()
        assert not set(ours) & names
        assert set(decoys) <= names
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for name in ours + decoys:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _run_demo(*args: str, stdin: str = "") -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "zgate_lab.main", "demo", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _assert_left_nothing(out: str) -> None:
    created = set(LAB_NAME.findall(out))
    assert len(created) == 3, out
    assert not created & _netns_names()
    workdir = re.search(r"Work directory .*: (\S+)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()


@pytest.mark.e2e
@pytest.mark.skipif(_E2E_SKIP is not None, reason=str(_E2E_SKIP))
def test_demo_runs_end_to_end() -> None:
    code, out = _run_demo()
    assert code == 0, out
    assert re.search(r"5 packets transmitted, 5 received, 0% packet loss", out), out
    assert out.count("checksum OK") == 2, out
    assert "mode datagram" in out
    assert out.rstrip().endswith("checksums OK")
    _assert_left_nothing(out)


@pytest.mark.e2e
@pytest.mark.skipif(_E2E_SKIP is not None, reason=str(_E2E_SKIP))
def test_demo_keep_in_stream_mode_waits_for_enter() -> None:
    code, out = _run_demo("--mode", "stream", "--keep", stdin="\n")
    assert code == 0, out
    assert "mode stream" in out
    assert re.search(r"ip netns exec za1-d[0-9a-f]{6} ping 203\.0\.113\.10", out), out
    assert "Press Enter" in out
    _assert_left_nothing(out)
