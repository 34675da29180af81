"""zgate access policy (sans-IO): model, loader, compiler/matcher, inline tests, lint, converter."""

from .compiler import GEOIP_REQUIRED, compile_policy, policy_version
from .convert import convert_go_policy
from .errors import PolicyError, PolicyInvalid, PolicyTestFailed, Problem, SourceMap
from .lint import LintWarning, lint
from .loader import load_and_compile, load_policy_file, load_policy_text
from .matcher import CompiledPolicy, Decision, Explanation, RuleTrace
from .model import Destination, Policy, PolicyTest, Rule, Verdict
from .names import TestTarget
from .ports import PortSpec
from .testing import TestResult, check_policy_tests, run_policy_tests, target_flow

__all__ = [
    "GEOIP_REQUIRED",
    "CompiledPolicy",
    "Decision",
    "Destination",
    "Explanation",
    "LintWarning",
    "Policy",
    "PolicyError",
    "PolicyInvalid",
    "PolicyTest",
    "PolicyTestFailed",
    "PortSpec",
    "Problem",
    "Rule",
    "RuleTrace",
    "SourceMap",
    "TestResult",
    "TestTarget",
    "Verdict",
    "check_policy_tests",
    "compile_policy",
    "convert_go_policy",
    "lint",
    "load_and_compile",
    "load_policy_file",
    "load_policy_text",
    "policy_version",
    "run_policy_tests",
    "target_flow",
]
