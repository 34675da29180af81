"""Following a zgate control plane: its change log (policy, revocations, connectors)
applied and cached, heartbeats with the live sessions, audit records shipped.

Sans-IO: :mod:`.state`, :mod:`.plan`, :mod:`.backoff`, :mod:`.audit_cursor` and
:func:`.heartbeat.heartbeat_body`. I/O: :mod:`.client` (httpx), :mod:`.follower`,
:mod:`.heartbeat`, :mod:`.shipper`, :mod:`.cache`; :mod:`.service` puts them together.
"""

from zgate_relay.control.boot import Boot, load_boot
from zgate_relay.control.service import ControlPlane

__all__ = ["Boot", "ControlPlane", "load_boot"]
