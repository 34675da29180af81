"""Send N UDP requests to HOST PORT and print how many echoes came back (JSON)."""

import json
import os
import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.settimeout(2.0)
ok = 0
for i in range(count):
    payload = i.to_bytes(4, "big") + os.urandom(96)
    sock.sendto(payload, (host, port))
    try:
        data, _ = sock.recvfrom(65535)
    except TimeoutError:
        continue
    ok += data == payload
print(json.dumps({"sent": count, "echoed": ok}))
