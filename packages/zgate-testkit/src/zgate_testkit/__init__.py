"""zgate's shared test helpers, in one dev-only package instead of a ``pythonpath`` setting.

- :mod:`zgate_testkit.memquic`: a fake in-memory ``QuicConn`` pair and the ``Link`` the HTTP/3
  and session tests move bytes with;
- :mod:`zgate_testkit.wire`: real engine connections (and the relay core, the agent's link)
  joined in memory, with datagram loss and a fake clock;
- :mod:`zgate_testkit.sessions`: CONNECT-IP session peers over a link;
- :mod:`zgate_testkit.pki`: test PKIs and the engine configurations that use them.

It builds on zgate_proto and zgate_pki only: every test environment has it (the workspace's
``dev`` group), the services' tests import it, and no product package depends on it.
"""
