"""Fixtures for the bacnet tests (helpers live in bacnet_helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("bacpypes3", reason="the bacnet extra is not installed (pip install gatewayd[bacnet])")

from bacnet_helpers import Device, free_udp_port  # noqa: E402


@pytest.fixture
def devices():
    """Factory: ``devices(instance, objects=18, *flags, host="127.0.0.2")`` -> Device (stopped at teardown)."""
    made: list[Device] = []

    def make(instance: int, objects: int = 18, *args: str, host: str = "127.0.0.2", port: int | None = None,
             netns: str | None = None) -> Device:
        port = port or free_udp_port(host if not netns else "127.0.0.1")
        d = Device(f"{host}:{port}", instance, objects, *args, netns=netns)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()

