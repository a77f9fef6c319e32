"""Fixtures for the control-socket tests: a server on a temporary socket."""

from __future__ import annotations

import functools

import pytest
import trio

from gatewayd.rpc import serve_unix
from rpc_support import Probe, Raw, make_registry


@pytest.fixture
def probe():
    return Probe()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "ctl.sock")


@pytest.fixture
async def server(nursery, sock_path, probe):
    """``serve_unix`` with the test registry; roles come from ``probe.role`` (viewer by default)."""
    await nursery.start(functools.partial(serve_unix, sock_path, make_registry(probe), probe.role_hook,
                                          max_request_bytes=4096))
    return sock_path


@pytest.fixture
async def start_server(nursery, probe):
    """Start another server: ``await start_server(path, **kwargs)`` returns its cancel scope."""
    async def start(path, **kwargs):
        scope = trio.CancelScope()
        role_map = kwargs.pop("role_map", probe.role_hook)

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await serve_unix(path, make_registry(probe), role_map, task_status=task_status, **kwargs)

        await nursery.start(run)
        return scope
    return start


@pytest.fixture
async def connect():
    """``raw = await connect(path)``: a :class:`Raw` client, closed at the end of the test."""
    opened = []

    async def open_(path):
        raw = await Raw.connect(path)
        opened.append(raw)
        return raw

    yield open_
    for raw in opened:
        await raw.close()
