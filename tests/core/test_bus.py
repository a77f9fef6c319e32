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


def test_publish_many_equals_publish_one_by_one(caplog):
    """The batch path (used by PointTable.ingest_many) keeps order, filters, drop-oldest and counters."""
    results = []
    for batched in (False, True):
        bus = Bus()
        live = bus.subscribe("watch", maxlen=7)
        even = bus.subscribe("even", accept=lambda e: e.value % 2 == 0)
        durable = bus.subscribe("recorder", durable=True, maxlen=12)
        with caplog.at_level(logging.ERROR, logger="gatewayd.bus"):
            caplog.clear()
            for chunk in ([ev(i) for i in range(5)], [], [ev(i) for i in range(5, 30)]):
                if batched:
                    bus.publish_many(chunk)
                else:
                    for e in chunk:
                        bus.publish(e)
            logged = len([r for r in caplog.records if "too slow" in r.message])
        results.append(([e.value for e in live.get_nowait()], live.dropped,
                        [e.value for e in even.get_nowait()], even.dropped,
                        [e.value for e in durable.get_nowait()], durable.dropped, bus.published, logged))
    assert results[0] == results[1]
    assert results[1][0] == list(range(23, 30)) and results[1][1] == 23
    assert results[1][4] == list(range(18, 30)) and results[1][6] == 30 and results[1][7] == 1


def test_fast_value_changed_constructor_builds_the_same_frozen_event():
    import dataclasses

    import pytest

    from gatewayd.events import value_changed

    args = (1.5, "d/p", "d", "drv", 21.5, "ok", "degC", ("fault",), ("t1",))
    fast, slow = value_changed(*args), ValueChanged(*args)
    assert type(fast) is ValueChanged and fast == slow and hash(fast) == hash(slow)
    assert dataclasses.astuple(fast) == args and fast.kind == "value"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 1
