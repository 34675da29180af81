"""zgate-lab: throw-away labs of network namespaces (the demo, tests/e2e, bench/) and the
in-process relay/agent harness of the services' tests. A dev-only package, never deployed."""
