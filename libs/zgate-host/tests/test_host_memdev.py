"""MemoryPacketDevice: the in-memory TUN stand-in used by integration tests."""

from __future__ import annotations

import asyncio
import errno

import pytest

from zgate_host import HostError, MemoryPacketDevice, PacketDevice

PACKET = (
    bytes.fromhex("4500001c000100004001f96c0a6400020a640001") + b"\x08\x00\xf7\xff\x00\x00\x00\x00"
)


def test_injected_packets_are_read_in_order_and_in_batches() -> None:
    with MemoryPacketDevice() as dev:
        for i in range(5):
            dev.inject(PACKET + bytes([i]))
        first = dev.read_batch(max_packets=3)
        rest = dev.read_batch()
        assert [p[-1] for p in first + rest] == [0, 1, 2, 3, 4]
        assert (len(first), len(rest)) == (3, 2)
        assert dev.read_batch() == []


def test_written_packets_reach_the_kernel_side_whole() -> None:
    with MemoryPacketDevice() as dev:
        assert dev.drain() == []
        big = bytes(range(256)) * 250
        dev.write(PACKET)
        dev.write(big)
        assert dev.drain() == [PACKET, big]
        assert dev.write_errors == 0


async def test_received_waits_for_the_daemon_and_times_out() -> None:
    with MemoryPacketDevice() as dev:
        loop = asyncio.get_running_loop()
        loop.call_soon(dev.write, PACKET)
        assert await dev.received(timeout=5) == PACKET
        with pytest.raises(TimeoutError):
            await dev.received(timeout=0.01)


async def test_add_reader_fires_when_a_packet_is_injected() -> None:
    with MemoryPacketDevice() as dev:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[list[bytes]] = asyncio.Queue()
        loop.add_reader(dev.fileno(), lambda: got.put_nowait(dev.read_batch()))
        try:
            dev.inject(PACKET)
            assert await asyncio.wait_for(got.get(), 5) == [PACKET]
        finally:
            loop.remove_reader(dev.fileno())


def test_a_full_queue_drops_writes_and_refuses_injection() -> None:
    with MemoryPacketDevice() as dev:
        for _ in range(100_000):
            dev.write(PACKET)
            if dev.write_errors:
                break
        assert dev.write_errors == 1
        assert dev.last_write_errno == errno.EAGAIN
        assert dev.drain()  # the queued packets are all still there
        with pytest.raises(HostError, match="not reading"):
            for _ in range(100_000):
                dev.inject(PACKET)


def test_close_is_idempotent_and_a_closed_device_refuses_use() -> None:
    dev = MemoryPacketDevice("mem7", mtu=1280)
    assert (dev.name, dev.mtu) == ("mem7", 1280)
    dev.close()
    dev.close()
    assert dev.closed
    for use in (dev.fileno, dev.read_batch, dev.drain, lambda: dev.write(PACKET)):
        with pytest.raises(HostError, match="closed"):
            use()


def test_memory_device_is_a_packet_device() -> None:
    device: PacketDevice = MemoryPacketDevice()
    try:
        assert isinstance(device, PacketDevice)
    finally:
        device.close()
