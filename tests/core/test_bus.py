"""Bus policy: publish never waits; live watchers drop oldest and count; durable queues batch."""

import logging

import trio

from gatewayd.bus import Bus
from gatewayd.events import ValueChanged


def ev(i):
    return ValueChanged(float(i), "d/p", "d", "drv", i)


def test_live_subscriber_drops_oldest_and_counts():
    bus = Bus()
    live = bus.subscribe("watch", maxlen=10)
    for i in range(25):
        bus.publish(ev(i))
    got = live.get_nowait()
    assert [e.value for e in got] == list(range(15, 25))
    assert live.dropped == 15


def test_durable_overflow_logs_once_per_episode(caplog):
    bus = Bus()
    d = bus.subscribe("recorder", durable=True, maxlen=5)
    with caplog.at_level(logging.ERROR, logger="gatewayd.bus"):
        for i in range(50):
            bus.publish(ev(i))
    assert d.dropped == 45
    assert len([r for r in caplog.records if "too slow" in r.message]) == 1
    d.get_nowait()
    with caplog.at_level(logging.ERROR, logger="gatewayd.bus"):
        for i in range(10):
            bus.publish(ev(i))
    assert len([r for r in caplog.records if "too slow" in r.message]) == 2


async def test_subscriber_wakes_once_per_burst_and_gets_a_batch():
    bus = Bus()
    sub = bus.subscribe("r", durable=True)
    got = []

    async def consumer():
        async for batch in sub:
            got.append(len(batch))
            if sum(got) >= 1000:
                return

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1000):
            bus.publish(ev(i))
    assert got == [1000]


async def test_filter_and_close():
    bus = Bus()
    sub = bus.subscribe("f", accept=lambda e: e.value % 2 == 0)
    for i in range(10):
        bus.publish(ev(i))
    assert [e.value for e in sub.get_nowait()] == [0, 2, 4, 6, 8]
    sub.close()
    bus.publish(ev(1))
    assert sub.pending() == 0
    assert bus.stats() == []
