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
