"""`zgate ctl`'s connection settings: flags, then the environment, then the config file, then
the default; every bad value refused with a message naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgate_cli.ctl.config import DEFAULT_URL, default_config_path, resolve_connection
from zgate_cli.ctl.errors import UsageError

TOKEN = "zgt_0123456789ab_" + "s" * 30


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose config directory is empty."""
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def write_config(env: dict[str, str], text: str) -> Path:
    path = default_config_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_anything(home: dict[str, str]) -> None:
    conn = resolve_connection(url=None, token=None, token_file=None, config=None, env=home)
    assert (conn.url, conn.token, conn.url_from, conn.token_from) == (
        DEFAULT_URL,
        None,
        "the default",
        None,
    )
    assert conn.api == DEFAULT_URL + "/api/v1"


def test_config_path_follows_xdg_then_home(tmp_path: Path) -> None:
    assert default_config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/zgate/ctl.yaml")
    assert default_config_path({"HOME": str(tmp_path)}) == tmp_path / ".config/zgate/ctl.yaml"


def test_precedence_flag_env_file(home: dict[str, str], tmp_path: Path) -> None:
    path = write_config(home, f"url: http://file:1\ntoken: {TOKEN}-file\n")
    conn = resolve_connection(url=None, token=None, token_file=None, config=None, env=home)
    assert (conn.url, conn.token) == ("http://file:1", f"{TOKEN}-file")
    assert conn.url_from == f"{path} (url:)"
    assert conn.token_from == f"{path} (token:)"

    env = {**home, "ZGATE_CONTROL_URL": "http://env:2", "ZGATE_CONTROL_TOKEN": f"{TOKEN}-env"}
    conn = resolve_connection(url=None, token=None, token_file=None, config=None, env=env)
    assert (conn.url, conn.token, conn.url_from, conn.token_from) == (
        "http://env:2",
        f"{TOKEN}-env",
        "ZGATE_CONTROL_URL",
        "ZGATE_CONTROL_TOKEN",
    )

    conn = resolve_connection(
        url="https://flag:3/", token=f" {TOKEN} ", token_file=None, config=None, env=env
    )
    assert (conn.url, conn.token, conn.url_from, conn.token_from) == (
        "https://flag:3",
        TOKEN,
        "--url",
        "--token",
    )

    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}-tf\n")
    conn = resolve_connection(url=None, token=None, token_file=token_file, config=None, env=env)
    assert (conn.token, conn.token_from) == (f"{TOKEN}-tf", f"--token-file {token_file}")


def test_explicit_config_file(home: dict[str, str], tmp_path: Path) -> None:
    write_config(home, "url: http://default-file:1\n")
    other = tmp_path / "other.yaml"
    other.write_text("url: http://other:9/api/v1/\n")
    conn = resolve_connection(url=None, token=None, token_file=None, config=other, env=home)
    assert conn.url == "http://other:9"  # the /api/v1 suffix is the client's to add
    with pytest.raises(UsageError, match=r"config file .*missing.yaml does not exist"):
        resolve_connection(
            url=None, token=None, token_file=None, config=tmp_path / "missing.yaml", env=home
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url: [1, 2\n", "is not valid YAML"),
        ("- url\n", "expected a mapping with url: and token:"),
        ("url: http://x:1\ntokn: abc\n", r"unknown key\(s\) tokn \(known: url, token\)"),
        ("url: 8080\n", "url: must be a non-empty string"),
        ("token: ''\n", "token: must be a non-empty string"),
    ],
)
def test_bad_config_files(home: dict[str, str], text: str, message: str) -> None:
    write_config(home, text)
    with pytest.raises(UsageError, match=message):
        resolve_connection(url=None, token=None, token_file=None, config=None, env=home)


def test_empty_config_file_is_no_settings(home: dict[str, str]) -> None:
    write_config(home, "# nothing yet\n")
    conn = resolve_connection(url=None, token=None, token_file=None, config=None, env=home)
    assert conn.url == DEFAULT_URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8080", "is not http\\(s\\)://HOST\\[:PORT\\]"),
        ("ftp://host", "is not http\\(s\\)://HOST\\[:PORT\\]"),
        ("http://host:99999", "has a bad port"),
        ("http://host:1/?x=1", "must not have a query"),
    ],
)
def test_bad_urls_name_their_source(home: dict[str, str], url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as refused:
        resolve_connection(url=url, token=None, token_file=None, config=None, env=home)
    assert "(from --url)" in str(refused.value)
    env = {**home, "ZGATE_CONTROL_URL": url}
    with pytest.raises(UsageError, match="from ZGATE_CONTROL_URL"):
        resolve_connection(url=None, token=None, token_file=None, config=None, env=env)


def test_token_errors(home: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="give --token or --token-file, not both"):
        resolve_connection(url=None, token=TOKEN, token_file=empty, config=None, env=home)
    with pytest.raises(UsageError, match=r"--token-file .*empty is empty"):
        resolve_connection(url=None, token=None, token_file=empty, config=None, env=home)
    with pytest.raises(UsageError, match="cannot read --token-file"):
        resolve_connection(
            url=None, token=None, token_file=tmp_path / "nope", config=None, env=home
        )
    with pytest.raises(UsageError, match="the token from --token is empty"):
        resolve_connection(url=None, token="  ", token_file=None, config=None, env=home)
