"""Read a policy from YAML, keeping the line and column of every field for error messages.

The YAML is composed into nodes (which carry their marks) and turned into plain data here,
rather than by PyYAML's constructor, so that: every field path maps to a position; duplicate keys
are errors; plain scalars stay strings (``NO`` is Norway, not False); and no YAML tag can build
anything but strings, lists, mappings, timestamps and nulls.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .compiler import compile_policy
from .errors import KEY, FieldPath, PolicyInvalid, Problem, SourceMap, format_path
from .matcher import CompiledPolicy
from .model import Policy, find_problems, raise_problems
from .testing import check_policy_tests

__all__ = [
    "load_and_compile",
    "load_policy_file",
    "load_policy_text",
    "parse_yaml",
    "validation_problems",
]

_STRING_TAGS: Final = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool")
)
_NULL: Final = "tag:yaml.org,2002:null"
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"
_MERGE: Final = "tag:yaml.org,2002:merge"
#: Bounds on what a document may expand to (aliases can multiply nodes).
_MAX_NODES: Final = 1_000_000
_MAX_DEPTH: Final = 64


class _Walker:
    """Turns a node tree into plain data, recording marks and collecting problems."""

    def __init__(self, source: SourceMap, marks: dict[FieldPath, tuple[int, int]]) -> None:
        self.source = source
        self.marks = marks
        self.problems: list[Problem] = []
        self.nodes = 0
        self.constructor = SafeConstructor()

    def fail(self, node: Node, path: FieldPath, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(self.source.file, mark.line + 1, mark.column + 1, format_path(path), message)
        )

    def walk(self, node: Node, path: FieldPath) -> object:
        self.nodes += 1
        if self.nodes > _MAX_NODES or len(path) > _MAX_DEPTH:
            raise _TooBig(node, path)
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            return [self.walk(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        self.fail(node, path, "unsupported YAML node")
        return None

    def scalar(self, node: ScalarNode, path: FieldPath) -> object:
        if node.tag in _STRING_TAGS:
            return str(node.value)
        if node.tag == _NULL:
            return None
        if node.tag == _TIMESTAMP:
            try:
                stamp: object = self.constructor.construct_yaml_timestamp(node)
            except ValueError:
                self.fail(node, path, f"invalid timestamp {node.value!r}")
                return None
            return stamp
        self.fail(node, path, f"unsupported YAML tag {node.tag}")
        return None

    def mapping(self, node: MappingNode, path: FieldPath) -> dict[str, object]:
        explicit = sum(key.tag != _MERGE for key, _ in node.value)
        try:
            self.constructor.flatten_mapping(node)  # resolves "<<": merged pairs come first
        except ConstructorError as exc:
            self.fail(node, path, f"bad merge key: {exc.problem}")
            return {}
        split = len(node.value) - explicit
        merged: dict[str, object] = {}
        for key_node, value_node in node.value[:split]:
            if isinstance(key_node, ScalarNode):
                merged[str(key_node.value)] = self.walk(value_node, (*path, str(key_node.value)))
        out: dict[str, object] = {}
        for key_node, value_node in node.value[split:]:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL:
                self.fail(key_node, path, "mapping keys must be plain strings")
                continue
            key = str(key_node.value)
            if key in out:
                self.fail(key_node, (*path, key), "duplicate key")
                continue
            self.marks.pop((*path, key), None)  # an explicit key overrides a merged one
            start = key_node.start_mark
            self.marks[(*path, key, KEY)] = (start.line + 1, start.column + 1)
            out[key] = self.walk(value_node, (*path, key))
        return {**merged, **out}


class _TooBig(Exception):
    def __init__(self, node: Node, path: FieldPath) -> None:
        self.node, self.path = node, path


def parse_yaml(text: str, name: str = "<policy>") -> tuple[object, SourceMap]:
    """YAML text -> plain data and its SourceMap; PolicyInvalid on any YAML problem."""
    marks: dict[FieldPath, tuple[int, int]] = {}
    source = SourceMap(name, marks)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        message = " ".join(filter(None, (exc.context, exc.problem))) or "invalid YAML"
        raise PolicyInvalid([Problem(name, line, column, "", f"YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyInvalid([Problem(name, 0, 0, "", f"YAML: {exc}")]) from None
    except RecursionError:
        raise PolicyInvalid([Problem(name, 0, 0, "", "YAML: nested too deeply")]) from None
    if node is None:
        raise PolicyInvalid([Problem(name, 1, 1, "", "the policy is empty")])
    walker = _Walker(source, marks)
    try:
        data = walker.walk(node, ())
    except _TooBig as exc:
        walker.fail(exc.node, exc.path, "the document is too large or nested too deeply")
        raise PolicyInvalid(walker.problems) from None
    if walker.problems:
        raise PolicyInvalid(walker.problems)
    return data, source


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing required field"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping"
    if kind in ("tuple_type", "list_type"):
        return "expected a list"
    if kind == "string_type":
        return "expected a string"
    if kind == "literal_error" and "ctx" in error:
        return f"expected {error['ctx']['expected']}, got {error['input']!r}"
    return error["msg"].removeprefix("Value error, ")


def _path(error: ErrorDetails) -> FieldPath:
    """The loc without pydantic's own markers (validator names), keeping ``[key]``."""
    return tuple(
        p for p in error["loc"] if isinstance(p, int) or p == KEY or not p.startswith("function")
    )


def validation_problems(exc: ValidationError, source: SourceMap) -> list[Problem]:
    """Pydantic's errors as Problems at their lines."""
    errors = [(_path(error), _message(error), error["type"]) for error in exc.errors()]
    paths = [path for path, _, _ in errors]
    return [
        source.problem(path, message)
        for path, message, kind in errors
        # A list whose items failed is also reported "too short": keep only the item errors.
        if kind != "too_short" or not any(p[: len(path)] == path != p for p in paths)
    ]


def _validated(data: object, source: SourceMap) -> Policy:
    if not isinstance(data, dict):
        raise PolicyInvalid([source.problem((), "the policy must be a mapping")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyInvalid(validation_problems(exc, source)) from None
    policy.with_source(source)
    raise_problems(policy, find_problems(policy))
    return policy


def load_policy_text(text: str, name: str = "<policy>") -> Policy:
    """Parse and validate a policy; PolicyInvalid (with `name`:line:column) when it is wrong."""
    data, source = parse_yaml(text, name)
    return _validated(data, source)


def load_policy_file(path: str | Path) -> Policy:
    """Read, parse and validate a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyInvalid(
            [Problem(str(path), 0, 0, "", f"cannot read the policy: {exc}")]
        ) from None
    return load_policy_text(text, str(path))


def load_and_compile(
    source: str | Path, *, geoip_available: bool, now: datetime, name: str | None = None
) -> CompiledPolicy:
    """Load (a Path: a file; a str: YAML text), compile, and run the inline tests at `now`.

    Raises PolicyInvalid, or PolicyTestFailed when a test fails: such a policy must not be used.
    """
    policy = (
        load_policy_file(source)
        if isinstance(source, Path)
        else load_policy_text(source, name or "<policy>")
    )
    compiled = compile_policy(policy, geoip_available=geoip_available)
    check_policy_tests(policy, compiled, now=now)
    return compiled
