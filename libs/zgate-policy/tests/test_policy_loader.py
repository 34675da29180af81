"""Loading policies: every validation error names the file, the line, the column and the field."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy import (
    GEOIP_REQUIRED,
    Policy,
    PolicyInvalid,
    Problem,
    compile_policy,
    load_policy_file,
    load_policy_text,
)
from zgate_policy.ports import PortSpec


def where(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the `occurrence`-th `needle` in `text`."""
    start = -1
    for _ in range(occurrence):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return line, column


def problems(text: str) -> list[Problem]:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_text(text, "policy.yaml")
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return caught.value.problems


def only_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def policy(body: str) -> str:
    return textwrap.dedent(body).lstrip()


def assert_at(
    problem: Problem, text: str, needle: str, field: str, message: str, occurrence: int = 1
) -> None:
    position = where(text, needle, occurrence)
    assert (problem.file, (problem.line, problem.column)) == ("policy.yaml", position)
    assert problem.field == field
    assert message in problem.message


GOOD = policy(
    """
    default: deny
    groups:
      eng: [alice, bob]
      staff: [carol, "group:eng"]
    resources:
      corp-net:
        - 10.1.0.0/16
        - fqdn: "*.corp.example"
          ports: [tcp/443]
    rules:
      - id: eng-corp
        action: allow
        from: ["group:eng"]
        to: [corp-net]
    """
)


def test_a_good_policy_loads_with_its_source_positions() -> None:
    loaded = load_policy_text(GOOD, "policy.yaml")
    assert loaded.rules[0].id == "eng-corp"
    assert loaded.rules[0].from_ == ("group:eng",)
    assert loaded.resources["corp-net"][0].cidr == ip_network("10.1.0.0/16")
    assert loaded.resources["corp-net"][1].ports == (PortSpec("tcp", 443, 443),)
    assert loaded.source.file == "policy.yaml"
    assert loaded.source.locate(("rules", 0, "from", 0)) == where(GOOD, '"group:eng"]', 2)


def test_unknown_group_in_a_rule_is_reported_at_its_line_with_a_suggestion() -> None:
    text = GOOD.replace('from: ["group:eng"]', 'from: ["group:engg"]')
    problem = only_problem(text)
    assert_at(problem, text, '"group:engg"', "rules[0].from[0]", 'unknown group "engg"')
    assert str(problem) == (
        f"policy.yaml:{problem.line}:{problem.column}: rules[0].from[0]: "
        'unknown group "engg" (did you mean "eng"?)'
    )


def test_unknown_group_in_a_group() -> None:
    text = GOOD.replace('"group:eng"]', '"group:nope"]', 1)
    assert_at(only_problem(text), text, '"group:nope"', "groups.staff[1]", 'unknown group "nope"')


def test_unknown_resource() -> None:
    text = GOOD.replace("to: [corp-net]", "to: [corp-nt]")
    assert_at(only_problem(text), text, "corp-nt", "rules[0].to[0]", 'unknown resource "corp-nt"')


def test_duplicate_rule_ids() -> None:
    text = GOOD + "  - {id: eng-corp, action: deny, from: ['*'], to: ['*']}\n"
    problem = only_problem(text)
    assert_at(problem, text, "eng-corp", "rules[1].id", 'duplicate rule id "eng-corp"', 2)
    assert "rules[0]" in problem.message


def test_reserved_rule_id() -> None:
    text = GOOD.replace("id: eng-corp", "id: default")
    assert_at(only_problem(text), text, "default\n", "rules[0].id", "reserved")


def test_group_cycles_are_shown() -> None:
    text = policy(
        """
        groups:
          a: ["group:b"]
          b: [alice, "group:c"]
          c: ["group:a"]
          self: ["group:self"]
        """
    )
    found = problems(text)
    assert [(p.field, p.message) for p in found] == [
        ("groups.c[0]", "group cycle: a -> b -> c -> a"),
        ("groups.self[0]", "group cycle: self -> self"),
    ]
    assert (found[0].line, found[0].column) == where(text, '"group:a"')


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("10.1.0.1/16", "has host bits set (did you mean 10.1.0.0/16?)"),
        ("10.1.0.0/33", "invalid CIDR or IP address"),
        ("300.1.2.3", "invalid CIDR or IP address"),
        ("2001:db8::/129", "invalid CIDR or IP address"),
        ("2001:db8::1/64", "host bits set"),
    ],
)
def test_bad_cidrs(bad: str, message: str) -> None:
    text = GOOD.replace("- 10.1.0.0/16", f"- {bad}")
    assert_at(only_problem(text), text, bad, "resources.corp-net[0].cidr", message)


def test_bad_cidr_in_a_mapping_and_inline() -> None:
    text = GOOD.replace("to: [corp-net]", "to: [corp-net, {cidr: 10.0.0.0/99}]")
    assert_at(only_problem(text), text, "10.0.0.0/99", "rules[0].to[1].cidr", "invalid CIDR")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("tcp/0", "ports are numbers from 1 to 65535"),
        ("tcp/65536", "ports are numbers from 1 to 65535"),
        ("udp/5100-5000", "the range is empty"),
        ("icmp/8", "icmp has no ports"),
        ("sctp/1", "expected tcp/PORT"),
        ("443", "expected tcp/PORT"),
        ("tcp/http", "ports are numbers"),
    ],
)
def test_bad_ports(bad: str, message: str) -> None:
    text = GOOD.replace("ports: [tcp/443]", f"ports: [tcp/443, {bad}]")
    assert_at(only_problem(text), text, f"{bad}]", "resources.corp-net[1].ports[1]", message)


@pytest.mark.parametrize(("bad", "good"), [("XX", "DE"), ("de1", "FR"), ("EU", "US")])
def test_bad_country_codes(bad: str, good: str) -> None:
    text = GOOD.replace("to: [corp-net]", f"to: [corp-net, {{country: [{good}, {bad}]}}]")
    problem = only_problem(text)
    assert_at(problem, text, bad, "rules[0].to[1].country[1]", "unknown country code")


def test_country_codes_are_case_insensitive_and_norway_is_not_false() -> None:
    text = GOOD.replace("to: [corp-net]", "to: [corp-net, {country: [no, DE]}, 'country:fr,SE']")
    loaded = load_policy_text(text)
    assert loaded.rules[0].to[1].country == ("NO", "DE")
    assert loaded.rules[0].to[2].country == ("FR", "SE")


def test_bad_fqdn_and_unknown_bare_name() -> None:
    text = GOOD.replace('"*.corp.example"', '"bad..example"')
    assert_at(only_problem(text), text, '"bad..', "resources.corp-net[1].fqdn", "invalid FQDN")
    text = GOOD.replace("- 10.1.0.0/16", "- intranet")
    assert_at(only_problem(text), text, "intranet", "resources.corp-net[0]", "is not a CIDR")


def test_missing_and_unknown_fields_and_bad_values() -> None:
    text = policy(
        """
        rules:
          - id: r1
            action: alow
            form: [alice]
            to: ["*"]
        """
    )
    found = {p.field: p for p in problems(text)}
    assert set(found) == {"rules[0].action", "rules[0].form", "rules[0].from"}
    assert_at(found["rules[0].action"], text, "alow", "rules[0].action", "expected 'allow' or")
    assert_at(found["rules[0].form"], text, "[alice]", "rules[0].form", "unknown field")
    assert_at(found["rules[0].from"], text, "id: r1", "rules[0].from", "missing required field")


def test_bad_ids_and_principals() -> None:
    text = policy(
        """
        rules:
          - {id: "bad id", action: allow, from: ["alice smith"], to: ["*"]}
        """
    )
    found = {p.field: p.message for p in problems(text)}
    assert "invalid rule id" in found["rules[0].id"]
    assert "invalid client id" in found["rules[0].from[0]"]


def test_empty_lists_and_wrong_types() -> None:
    text = policy(
        """
        default: maybe
        groups: [eng]
        rules:
          - {id: r1, action: allow, from: [], to: "*"}
        """
    )
    found = {p.field: p.message for p in problems(text)}
    assert found["default"] == "expected 'allow' or 'deny', got 'maybe'"
    assert found["groups"] == "expected a mapping"
    assert "at least 1 item" in found["rules[0].from"]
    assert found["rules[0].to"] == "expected a list"


def test_destination_needs_exactly_one_kind() -> None:
    text = GOOD.replace('- fqdn: "*.corp.example"', '- {fqdn: "*.corp.example", cidr: 10.0.0.0/8}')
    text = text.replace("      ports: [tcp/443]\n", "")
    assert "exactly one of" in only_problem(text).message


def test_yaml_syntax_errors_have_positions() -> None:
    problem = only_problem("rules:\n  - id: [unclosed\n")
    assert problem.file == "policy.yaml"
    assert problem.line >= 2
    assert problem.message.startswith("YAML:")


def test_duplicate_keys_are_errors() -> None:
    text = "default: deny\ndefault: allow\n"
    assert_at(only_problem(text), text, "default", "default", "duplicate key", 2)


def test_unsupported_tags_empty_and_non_mapping_documents() -> None:
    assert "unsupported YAML tag" in only_problem("default: !!binary aGk=\n").message
    assert only_problem("").message == "the policy is empty"
    assert only_problem("- a\n- b\n").message == "the policy must be a mapping"
    assert "mapping keys" in only_problem("? [a]\n: b\n").message


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    assert "too large" in only_problem("\n".join(lines) + "\n").message


def test_anchors_and_merge_keys_work() -> None:
    text = policy(
        """
        resources:
          base: &nets [10.0.0.0/8]
        rules:
          - &first {id: r1, action: allow, from: ["*"], to: *nets}
          - {<<: *first, id: r2}
        """
    )
    loaded = load_policy_text(text)
    assert [r.id for r in loaded.rules] == ["r1", "r2"]
    assert loaded.rules[1].to == loaded.rules[0].to


def test_expires_accepts_dates_and_naive_times_as_utc() -> None:
    text = GOOD.replace("to: [corp-net]", "to: [corp-net]\n    expires: 2027-01-01")
    assert load_policy_text(text).rules[0].expires == datetime(2027, 1, 1, tzinfo=UTC)
    text = GOOD.replace("to: [corp-net]", "to: [corp-net]\n    expires: 2027-01-01T10:00:00")
    assert load_policy_text(text).rules[0].expires == datetime(2027, 1, 1, 10, tzinfo=UTC)
    text = GOOD.replace("to: [corp-net]", "to: [corp-net]\n    expires: 2027-13-45T10:00:00")
    assert "expires" in only_problem(text).field


def test_bad_tests_entries() -> None:
    text = GOOD + policy(
        """
        tests:
          - {from: alice, to: "tcp://10.1.2.3", expect: allow}
          - {from: alice, to: "http://x.example:80", expect: allow}
          - {from: alice, to: "icmp://10.1.2.3:5", expect: allow}
        """
    )
    found = {p.field: p.message for p in problems(text)}
    assert "tcp needs a port" in found["tests[0].to"]
    assert "expected tcp://HOST:PORT" in found["tests[1].to"]
    assert "icmp has no port" in found["tests[2].to"]
    # References are checked once the shapes are right.
    text = (
        GOOD + 'tests:\n  - {from: alice, to: "udp://[2001:db8::1]:53", expect: deny, rule: nop}\n'
    )
    assert_at(only_problem(text), text, "nop}", "tests[0].rule", 'unknown rule id "nop"')


def test_geoip_rules_need_a_database() -> None:
    text = GOOD.replace("to: [corp-net]", "to: [corp-net, 'country:DE']")
    loaded = load_policy_text(text, "policy.yaml")
    assert compile_policy(loaded, geoip_available=True).uses_geoip
    with pytest.raises(PolicyInvalid) as caught:
        compile_policy(loaded, geoip_available=False)
    (problem,) = caught.value.problems
    assert problem.message == GEOIP_REQUIRED
    assert (problem.field, (problem.line, problem.column)) == (
        "rules[0].to[1]",
        where(text, "'country:DE'"),
    )


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD.replace("action: allow", "action: nope"))
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_file(path)
    assert str(caught.value).startswith(f"{path}:{where(GOOD, 'allow')[0]}:")
    with pytest.raises(PolicyInvalid, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")


YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@`,?\n 0123./")), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), YAMLISH))
def test_arbitrary_text_raises_only_policy_errors(text: str) -> None:
    try:
        loaded = load_policy_text(text)
    except PolicyInvalid as exc:
        assert exc.problems and all(p.file == "<policy>" for p in exc.problems)
    else:
        assert isinstance(loaded, Policy)


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(["allow", "deny", "*", "10.0.0.0/8", "tcp/443", "group:eng", "alice", "DE"]),
    st.text(max_size=10),
)
KEYS = st.sampled_from(
    [
        "default",
        "groups",
        "resources",
        "rules",
        "tests",
        "id",
        "action",
        "from",
        "to",
        "ports",
        "expires",
        "cidr",
        "fqdn",
        "country",
        "expect",
        "eng",
        "x",
    ]
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, DOCS, max_size=5))
def test_arbitrary_documents_raise_only_policy_errors(doc: dict[str, object]) -> None:
    try:
        loaded = load_policy_text(yaml.safe_dump(doc))
        result = compile_policy(loaded, geoip_available=False)
    except PolicyInvalid as exc:
        assert exc.problems and all(p.message for p in exc.problems)
    else:
        assert result.rule_ids[-1] == "default"


def test_bad_keys_point_at_the_key() -> None:
    text = policy(
        """
        groups:
          "bad name":
            - alice
        """
    )
    assert_at(only_problem(text), text, '"bad name"', "groups.bad name", "invalid name")
