"""asyncio bridge round trips: trio -> asyncio thread -> trio, versus plain asyncio in the same run.

Prints calls/s for a trivial coroutine (``await asyncio.sleep(0)``) awaited
through :class:`gatewayd.aio.AsyncioBridge`, sequential and 50 concurrent, and
the same coroutine awaited natively inside asyncio as the baseline.
"""

import asyncio
import os
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gatewayd.aio import open_asyncio_bridge  # noqa: E402

N = 20_000


async def tiny():
    await asyncio.sleep(0)
    return 1


async def via_bridge():
    async with open_asyncio_bridge() as aio:
        for _ in range(200):
            await aio.run(tiny)
        t = time.perf_counter()
        for _ in range(N):
            await aio.run(tiny)
        seq = N / (time.perf_counter() - t)
        t = time.perf_counter()
        async with trio.open_nursery() as n:
            for _ in range(50):
                async def worker():
                    for _ in range(N // 50):
                        await aio.run(tiny)
                n.start_soon(worker)
        conc = N / (time.perf_counter() - t)
    return seq, conc


async def native():
    t = time.perf_counter()
    for _ in range(N):
        await asyncio.get_running_loop().create_task(tiny())
    return N / (time.perf_counter() - t)


def main():
    seq, conc = trio.run(via_bridge)
    base = asyncio.run(native())
    print(f"bridge, sequential      : {seq:10.0f} calls/s ({1e6 / seq:6.1f} us/call)")
    print(f"bridge, 50 concurrent   : {conc:10.0f} calls/s")
    print(f"native asyncio (task)   : {base:10.0f} calls/s ({1e6 / base:6.1f} us/call)")
    print(f"ratio bridge/native     : {seq / base:10.2f} (sequential)")


if __name__ == "__main__":
    main()
