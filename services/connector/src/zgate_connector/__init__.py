"""zgate-connector: an on-prem connector that dials out to the relay and serves a private site."""
