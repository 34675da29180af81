"""A UDP echo server for the lab's internet host (IPv4 and IPv6): python udp_echo.py PORT."""

import socket
import sys

port = int(sys.argv[1])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", port))
while True:
    data, addr = sock.recvfrom(65535)
    sock.sendto(data, addr)
