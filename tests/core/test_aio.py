"""gatewayd.aio: the asyncio bridge — round trips, cancellation both ways, the channel, shutdown, asyncua."""

import asyncio
import logging
import socket
import threading

import pytest
import trio

from gatewayd.aio import AsyncioCancelled, BridgeClosed, open_asyncio_bridge


async def add(a, b):
    await asyncio.sleep(0)
    return a + b


async def fail(text):
    await asyncio.sleep(0)
    raise ValueError(text)


def on_loop_thread():
    asyncio.get_running_loop()  # raises outside a running loop
    return threading.current_thread().name


async def test_round_trip_results_exceptions_and_sync_calls():
    async with open_asyncio_bridge() as aio:
        assert await aio.run(add, 2, 3) == 5
        with pytest.raises(ValueError, match="bad frame"):
            await aio.run(fail, "bad frame")
        assert await aio.run_sync(on_loop_thread) == "gatewayd-asyncio"
        with pytest.raises(ZeroDivisionError):
            await aio.run_sync(lambda: 1 / 0)
        # a method returning a loop-bound future (bacpypes3's who_is does) is awaited too
        assert await aio.run(_resolved, 7) == 7
        with pytest.raises(TypeError, match="not an awaitable"):
            await aio.run(lambda: 42)
        coro = add(1, 2)
        with pytest.raises(TypeError, match="not a coroutine"):
            await aio.run(coro)  # created on the trio thread: refused (and closed, no "never awaited")
        assert aio.calls == 6 and aio.pending == 0 and aio.running
        thread = aio.thread
    assert not thread.is_alive() and aio.loop.is_closed() and not aio.running
    with pytest.raises(BridgeClosed):
        await aio.run(add, 1, 1)
    with pytest.raises(BridgeClosed):
        await aio.run_sync(on_loop_thread)


def _resolved(value):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def started_signal(aio):
    """(event for trio, callable for the asyncio side that sets it through the token)."""
    ev = trio.Event()
    return ev, lambda: aio.call_soon_in_trio(ev.set)


async def test_trio_cancellation_cancels_the_asyncio_task_and_waits_for_its_finally():
    seen = []
    async with open_asyncio_bridge() as aio:
        started, signal = started_signal(aio)

        async def long_wait():
            signal()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("CancelledError")
                raise
            finally:
                await asyncio.sleep(0.05)  # asynchronous cleanup: run() must wait for it
                seen.append("finally")

        cs = trio.CancelScope()

        async def caller():
            with cs:
                await aio.run(long_wait)
            seen.append(f"trio cancelled_caught={cs.cancelled_caught}")

        async with trio.open_nursery() as n:
            n.start_soon(caller)
            await started.wait()
            cs.cancel()
        assert seen == ["CancelledError", "finally", "trio cancelled_caught=True"]
        assert aio.pending == 0
        # the loop is still fine after a cancellation
        assert await aio.run(add, 1, 1) == 2


async def test_a_result_produced_despite_the_cancel_is_delivered_not_dropped():
    async with open_asyncio_bridge() as aio:
        started, signal = started_signal(aio)

        async def swallows():
            signal()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return "connection object"  # e.g. a resource the caller must close

        result = None
        with trio.CancelScope() as cs:

            async def cancel_when_started():
                await started.wait()
                cs.cancel()

            async with trio.open_nursery() as n:
                n.start_soon(cancel_when_started)
                result = await aio.run(swallows)
                await trio.sleep(0)  # the pending cancellation lands at the next checkpoint
        assert result == "connection object" and cs.cancelled_caught


async def test_cancel_grace_bounds_a_coroutine_that_ignores_cancellation(caplog):
    caplog.set_level(logging.ERROR, logger="gatewayd.aio")
    async with open_asyncio_bridge(cancel_grace=0.2, shutdown_timeout=0.3) as aio:
        started, signal = started_signal(aio)

        async def stubborn():
            signal()
            while True:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    continue

        # bounded by cancel_grace, not by the coroutine (how long it takes is a figure: bench/aio.py)
        with trio.move_on_after(5) as outer:
            async with trio.open_nursery() as n:
                n.start_soon(aio.run, stubborn)
                await started.wait()
                n.cancel_scope.cancel()
        assert not outer.cancelled_caught
    assert "stubborn did not finish within 0.2s of its cancellation" in caplog.text
    # shutdown did not hang either: the task is named and abandoned
    assert "ignored cancellation" in caplog.text and not aio.thread.is_alive()


async def test_asyncio_side_cancellation_surfaces_as_AsyncioCancelled():
    async with open_asyncio_bridge() as aio:

        async def cancelled_by_asyncio():
            asyncio.get_running_loop().call_later(0.01, asyncio.current_task().cancel)
            await asyncio.sleep(60)

        with pytest.raises(AsyncioCancelled, match="cancelled_by_asyncio was cancelled on the asyncio side"):
            await aio.run(cancelled_by_asyncio)


async def test_channel_delivers_in_order_and_drops_oldest_when_full(caplog):
    async with open_asyncio_bridge() as aio:
        async with aio.channel(max_buffer=1000) as (send, receive):
            await aio.run_sync(lambda: [send(i) for i in range(500)])
            assert [await receive.receive() for _ in range(500)] == list(range(500))
            assert receive.dropped == 0

        async with aio.channel(max_buffer=10) as (send, receive):
            # 25 items in one loop-thread callback: trio cannot read in between
            await aio.run_sync(lambda: [send(i) for i in range(25)])
            assert receive.statistics()["waiting"] == 10
            got = [receive.receive_nowait() for _ in range(10)]
            assert got == list(range(15, 25)) and receive.dropped == 15
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()
        assert "dropping the oldest" in caplog.text
        assert await aio.run_sync(send, "late") is False  # closed with its block

        # the asyncio side can end the stream; the receiver drains first
        async with aio.channel() as (send, receive):
            async def produce():
                for i in range(3):
                    send(i)
                    await asyncio.sleep(0.001)
                receive.close()  # thread-safe; the only method of the receiver the loop side may call

            async with trio.open_nursery() as n:
                n.start_soon(aio.run, produce)
                assert [i async for i in receive] == [0, 1, 2]


async def test_call_soon_in_trio_runs_callbacks_and_contains_their_errors(caplog):
    got = []
    async with open_asyncio_bridge() as aio:
        done = trio.Event()

        def boom():
            raise RuntimeError("callback bug")

        def on_loop():
            aio.call_soon_in_trio(boom)
            aio.call_soon_in_trio(lambda: got.append(threading.current_thread().name))
            aio.call_soon_in_trio(done.set)

        await aio.run_sync(on_loop)
        await done.wait()
    assert got == ["MainThread"]
    assert "callback boom from the asyncio thread failed" in caplog.text


async def test_shutdown_with_pending_tasks_cancels_them_and_closes_the_loop():
    seen = []

    async def pending_call():
        try:
            await asyncio.sleep(60)
        finally:
            seen.append("call finally")

    async def orphan():  # started on the loop, awaited by nobody
        try:
            await asyncio.sleep(60)
        finally:
            seen.append("orphan finally")

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            seen.append("asyncgen finally")

    keep = []

    async def start_orphans():
        keep.append(asyncio.get_running_loop().create_task(orphan()))
        g = agen()
        keep.append(g)
        await g.__anext__()  # suspended inside the try: only shutdown_asyncgens() finalizes it

    outcome = []
    async with trio.open_nursery() as n:
        async with open_asyncio_bridge() as aio:
            await aio.run(start_orphans)
            started, signal = started_signal(aio)

            async def caller():
                try:
                    await aio.run(lambda: _signal_then(signal, pending_call()))
                except BridgeClosed as e:
                    outcome.append(str(e))

            n.start_soon(caller)
            await started.wait()
            loop, thread = aio.loop, aio.thread
    assert sorted(seen) == ["asyncgen finally", "call finally", "orphan finally"]
    assert outcome == ["<lambda>: cancelled by the asyncio bridge shutdown"]
    assert loop.is_closed() and not thread.is_alive()
    keep.clear()


async def _signal_then(signal, coro):
    signal()
    return await coro


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpcUa:
    """An asyncua server and client living on the bridge's loop; every method runs there."""

    def __init__(self, port: int) -> None:
        self.url = f"opc.tcp://127.0.0.1:{port}/gatewayd-test/"
        self.events = []

    async def start(self) -> str:
        from asyncua import Client, Server

        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(self.url)
        idx = await self.server.register_namespace("urn:gatewayd:test")
        meter = await self.server.nodes.objects.add_object(idx, "Meter")
        self.kw = await meter.add_variable(idx, "kW", 12.5)
        await self.server.start()
        self.client = Client(self.url, timeout=5)
        await self.client.connect()
        return self.kw.nodeid.to_string()

    async def read(self, nodeid: str) -> float:
        return await self.client.get_node(nodeid).read_value()

    async def wait_for_change(self, nodeid: str, send) -> None:
        """Subscribe; every data change goes to trio through ``send``; wait (forever) for a change."""
        changed = asyncio.Event()

        class Handler:
            def datachange_notification(self, node, val, data):
                send(val)
                if val != 12.5:
                    changed.set()

        sub = await self.client.create_subscription(50, Handler())
        try:
            await sub.subscribe_data_change(self.client.get_node(nodeid))
            await changed.wait()
        except asyncio.CancelledError:
            self.events.append("wait cancelled")
            raise
        finally:
            await sub.delete()  # network round trip during the cancellation
            self.events.append("subscription deleted")

    async def stop(self) -> None:
        await self.client.disconnect()
        await self.server.stop()
        self.events.append("stopped")


async def test_real_asyncua_server_and_client_through_the_bridge_cancelled_from_trio(caplog):
    pytest.importorskip("asyncua")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    caplog.set_level(logging.WARNING)
    async with open_asyncio_bridge() as aio:
        opc = OpcUa(free_port())
        nodeid = await aio.run(opc.start)
        assert await aio.run(opc.read, nodeid) == 12.5
        async with aio.channel() as (send, values):
            with trio.move_on_after(20) as guard:
                async with trio.open_nursery() as n:
                    n.start_soon(aio.run, opc.wait_for_change, nodeid, send)
                    assert await values.receive() == 12.5  # initial notification, via the channel
                    n.cancel_scope.cancel()  # the subscription wait is cancelled from trio
            assert not guard.cancelled_caught
        # aio.run returned only after the asyncio side cleaned up (a network round trip)
        assert opc.events == ["wait cancelled", "subscription deleted"]
        assert await aio.run(opc.read, nodeid) == 12.5  # the client still works
        await aio.run(opc.stop)
        thread = aio.thread
    assert opc.events[-1] == "stopped" and not thread.is_alive()
    assert not [r for r in caplog.records if r.name.startswith("gatewayd") and r.levelno >= logging.WARNING]
