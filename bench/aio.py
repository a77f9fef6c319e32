"""asyncio from trio: gatewayd's thread bridge against trio-asyncio, and asyncio itself as the baseline.

Prints calls/s for a trivial coroutine (``await asyncio.sleep(0)``) awaited from
trio through :class:`gatewayd.aio.AsyncioBridge`, sequentially and from 50
concurrent trio tasks; the same through trio-asyncio (``aio_as_trio``) when it
is installed (it is not a gatewayd dependency: ``pip install trio-asyncio`` in a
scratch venv); and the coroutine awaited as a task inside plain asyncio.
With asyncua installed it also times a real library call, an OPC UA
``read_value`` against a local asyncua server, through the bridge and natively.

trio-asyncio runs in a child process: importing it changes asyncio for the
whole process, which would distort the other two figures.

    python bench/aio.py [N]
"""

import asyncio
import logging
import os
import subprocess
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gatewayd.aio import open_asyncio_bridge  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 10_000
CONCURRENT = 50
ROUNDS = 3  # best of: the figures are for a shared, noisy machine


async def tiny():
    await asyncio.sleep(0)
    return 1


async def measure(call) -> tuple[float, float]:
    """(sequential calls/s, concurrent calls/s) for ``await call(tiny)``."""
    for _ in range(200):
        await call(tiny)
    t = time.perf_counter()
    for _ in range(N):
        await call(tiny)
    seq = N / (time.perf_counter() - t)

    async def worker():
        for _ in range(N // CONCURRENT):
            await call(tiny)

    t = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(CONCURRENT):
            n.start_soon(worker)
    return seq, N / (time.perf_counter() - t)


async def via_bridge() -> tuple[float, float]:
    async with open_asyncio_bridge() as aio:
        return await measure(aio.run)


async def via_trio_asyncio() -> tuple[float, float]:
    import trio_asyncio

    async with trio_asyncio.open_loop():
        return await measure(lambda fn: trio_asyncio.aio_as_trio(fn)())


def trio_asyncio_child() -> tuple[float, float] | str:
    """Figures from a child process, or why there are none."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--trio-asyncio", str(N)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["failed"])[-1]
        return last
    seq, conc = out.stdout.split()
    return float(seq), float(conc)


async def native() -> float:
    loop = asyncio.get_running_loop()
    for _ in range(200):
        await loop.create_task(tiny())
    t = time.perf_counter()
    for _ in range(N):
        await loop.create_task(tiny())
    return N / (time.perf_counter() - t)


READS = 1000


class OpcUaReads:
    """A local asyncua server and client; ``start``/``reads``/``stop`` run on one asyncio loop."""

    async def start(self) -> None:
        import socket

        from asyncua import Client, Server

        logging.getLogger("asyncua").setLevel(logging.ERROR)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"opc.tcp://127.0.0.1:{s.getsockname()[1]}/bench/"
        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(url)
        idx = await self.server.register_namespace("urn:gatewayd:bench")
        self.var = await (await self.server.nodes.objects.add_object(idx, "M")).add_variable(idx, "v", 1.5)
        await self.server.start()
        self.client = Client(url)
        await self.client.connect()
        self.node = self.client.get_node(self.var.nodeid)

    async def read(self) -> float:
        return await self.node.read_value()

    async def stop(self) -> None:
        await self.client.disconnect()
        await self.server.stop()


async def asyncua_via_bridge() -> float:
    async with open_asyncio_bridge() as aio:
        opc = OpcUaReads()
        await aio.run(opc.start)
        try:
            for _ in range(50):
                await aio.run(opc.read)
            t = time.perf_counter()
            for _ in range(READS):
                await aio.run(opc.read)
            return READS / (time.perf_counter() - t)
        finally:
            await aio.run(opc.stop)


async def asyncua_native() -> float:
    opc = OpcUaReads()
    await opc.start()
    try:
        for _ in range(50):
            await opc.read()
        t = time.perf_counter()
        for _ in range(READS):
            await opc.read()
        return READS / (time.perf_counter() - t)
    finally:
        await opc.stop()


async def stubborn_cancel(grace: float = 0.2) -> float:
    """Seconds from cancelling (on the trio side) a coroutine that ignores its cancellation to the
    trio call returning: bounded by ``cancel_grace`` (formerly a timed assert in tests/core/test_aio.py)."""
    async with open_asyncio_bridge(cancel_grace=grace, shutdown_timeout=0.3) as aio:
        started = trio.Event()

        async def stubborn():
            aio.call_soon_in_trio(started.set)
            while True:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    continue

        logging.getLogger("gatewayd.aio").setLevel(logging.CRITICAL)
        async with trio.open_nursery() as n:
            n.start_soon(aio.run, stubborn)
            await started.wait()
            t = time.perf_counter()
            n.cancel_scope.cancel()
        return time.perf_counter() - t


def best(rounds: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(max(r[i] for r in rounds) for i in range(len(rounds[0])))


def main():
    if "--trio-asyncio" in sys.argv:
        seq, conc = trio.run(via_trio_asyncio)
        print(seq, conc)
        return
    bridge, ta, base = [], [], []
    for _ in range(ROUNDS):  # interleaved, so a burst of load hits all three alike
        bridge.append(trio.run(via_bridge))
        ta.append(trio_asyncio_child())
        base.append((asyncio.run(native()),))
    seq, conc = best(bridge)
    (base,) = best(base)
    print(f"{N} calls of `await asyncio.sleep(0)` from trio, {os.cpu_count()} CPUs, best of {ROUNDS}")
    print(f"gatewayd bridge, sequential     : {seq:9.0f} calls/s ({1e6 / seq:6.1f} us/call)")
    print(f"gatewayd bridge, {CONCURRENT} concurrent  : {conc:9.0f} calls/s")
    if any(isinstance(r, str) for r in ta):
        print(f"trio-asyncio                    : not measured ({next(r for r in ta if isinstance(r, str))})")
    else:
        ta_seq, ta_conc = best(ta)
        print(f"trio-asyncio, sequential        : {ta_seq:9.0f} calls/s ({1e6 / ta_seq:6.1f} us/call)")
        print(f"trio-asyncio, {CONCURRENT} concurrent     : {ta_conc:9.0f} calls/s")
        print(f"bridge / trio-asyncio           : {seq / ta_seq:9.2f}x sequential, {conc / ta_conc:.2f}x concurrent")
    print(f"plain asyncio task (baseline)   : {base:9.0f} calls/s ({1e6 / base:6.1f} us/call)")
    took = trio.run(stubborn_cancel)
    print(f"cancel a coroutine ignoring it  : {took:9.3f} s to return (cancel_grace 0.2 s)")
    try:
        import asyncua  # noqa: F401
    except ImportError:
        print("asyncua reads                   : not measured (asyncua is not installed)")
        return
    reads = [(trio.run(asyncua_via_bridge), asyncio.run(asyncua_native())) for _ in range(ROUNDS)]
    via, nat = best(reads)
    print(f"asyncua read_value, via bridge  : {via:9.0f} reads/s ({1e3 / via:5.2f} ms/read)")
    print(f"asyncua read_value, in asyncio  : {nat:9.0f} reads/s ({1e3 / nat:5.2f} ms/read)")
    print(f"bridge cost on a real call      : {1e3 / via - 1e3 / nat:9.2f} ms/read ({(nat / via - 1) * 100:.0f} %)")


if __name__ == "__main__":
    main()
