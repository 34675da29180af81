"""zgate-control: the control plane (REST API, SQL storage, the change log relays follow)."""
