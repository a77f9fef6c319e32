"""HistoryStore: append, query, downsample, prune, current values."""

from __future__ import annotations

import math

import pytest

from gatewayd.store import HistoryStore


@pytest.fixture
def history(tmp_path):
    store = HistoryStore(tmp_path / "history.db")
    yield store
    store.close()


async def test_append_query_types_and_order(history):
    n = await history.append(
        [
            ("ahu1/t", 100.0, 21.5, "ok"),
            ("ahu1/t", 101.0, 22, "ok"),
            ("ahu1/t", 102.0, True, "stale"),
            ("ahu1/t", 103.0, "text", "fault"),
            ("ahu1/t", 104.0, None, "down"),
            ("ahu1/t", 105.0, math.nan, "ok"),
            ("ahu2/t", 100.5, 1.0, "remote-fault"),
        ]
    )
    assert n == 7
    rows = history.query("ahu1/t")
    assert [(r["ts"], r["value"], r["status"]) for r in rows] == [
        (100.0, 21.5, "ok"),
        (101.0, 22, "ok"),
        (102.0, True, "stale"),
        (103.0, "text", "fault"),
        (104.0, None, "down"),
        (105.0, None, "ok"),  # NaN is stored as NULL
    ]
    assert type(rows[1]["value"]) is int and type(rows[2]["value"]) is bool
    assert history.query("ahu2/t") == [{"ts": 100.5, "value": 1.0, "status": "remote-fault"}]
    assert [r["ts"] for r in history.query("ahu1/t", start=101, end=103)] == [101.0, 102.0, 103.0]
    assert [r["ts"] for r in history.query("ahu1/t", order="desc", limit=2)] == [105.0, 104.0]
    assert history.query("nope") == []
    assert await history.query_async("ahu1/t", start=104) == rows[4:]
    with pytest.raises(TypeError):
        await history.append([("x", 1.0, [1, 2], "ok")])
    with pytest.raises(ValueError):
        history.query("ahu1/t", order="sideways")
    # same point, same ts: the later append wins
    await history.append([("ahu2/t", 100.5, 2.0, "ok")])
    assert history.query("ahu2/t") == [{"ts": 100.5, "value": 2.0, "status": "ok"}]
    assert history.point_ids() == ["ahu1/t", "ahu2/t"]


async def test_rolled_back_point_ids_do_not_stick(tmp_path):
    with HistoryStore(tmp_path / "h.db") as history:
        with pytest.raises(TypeError):
            await history.append([("new/point", 1.0, 1.0, "new-status"), ("bad", 2.0, object(), "ok")])
        await history.append([("other", 1.0, 5.0, "ok"), ("new/point", 2.0, 3.0, "new-status")])
        assert history.query("new/point") == [{"ts": 2.0, "value": 3.0, "status": "new-status"}]
        assert history.query("other") == [{"ts": 1.0, "value": 5.0, "status": "ok"}]


async def test_downsample_buckets(history):
    samples = [("p", 1000.0 + i, float(i), "ok") for i in range(120)]  # 2 minutes at 1 Hz
    samples += [("p", 1000.5, "skip me", "ok"), ("p", 1001.5, None, "ok"), ("q", 1000.0, 99.0, "ok")]
    await history.append(samples)
    buckets = history.query("p", downsample=60)
    # 1000..1019 fall in [960, 1020), 1020..1079 in [1020, 1080), 1080..1119 in [1080, 1140)
    assert [(b["ts"], b["count"], b["min"], b["max"], b["last"], b["last_ts"]) for b in buckets] == [
        (960.0, 20, 0.0, 19.0, 19.0, 1019.0),
        (1020.0, 60, 20.0, 79.0, 79.0, 1079.0),
        (1080.0, 40, 80.0, 119.0, 119.0, 1119.0),
    ]
    assert buckets[1]["avg"] == pytest.approx(49.5)
    assert [b["ts"] for b in history.query("p", downsample=60, order="desc", limit=2)] == [1080.0, 1020.0]
    assert [b["count"] for b in history.query("p", start=1030, end=1089, downsample=60)] == [50, 10]
    bools = [("b", 2000.0 + i, i % 4 == 0, "ok") for i in range(8)]
    await history.append(bools)
    assert history.query("b", downsample=10)[0]["avg"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        history.query("p", downsample=0)
    assert await history.query_async("p", downsample=600) == [
        {
            "ts": 600.0,
            "min": 0.0,
            "max": 119.0,
            "avg": pytest.approx(59.5),
            "count": 120,
            "last": 119.0,
            "last_ts": 1119.0,
        }
    ]


async def test_prune_in_chunks(history):
    samples = [(f"p{i % 10}", 1000.0 + i // 10, i, "ok") for i in range(5000)]  # 10 points share each ts
    await history.append(samples)
    assert await history.prune(1100.0, chunk=37) == 1000
    remaining = history.query("p3", limit=10000)
    assert len(remaining) == 400 and remaining[0]["ts"] == 1100.0
    assert await history.prune(1100.0) == 0
    assert await history.prune(10_000.0, chunk=5) == 4000  # chunk smaller than one instant's rows
    assert history.query("p3") == []


async def test_current_save_load_survives_restart(tmp_path):
    path = tmp_path / "history.db"
    with HistoryStore(path) as history:
        await history.save_current([("a", 10.0, 1.5, "ok"), ("b", 10.0, False, "fault"), ("c", 10.0, None, "down")])
        await history.save_current([("a", 20.0, 2.5, "stale"), ("b", 5.0, True, "ok")])  # b's older row is ignored
    with HistoryStore(path) as history:
        current = history.load_current()
    assert current == {"a": (20.0, 2.5, "stale"), "b": (10.0, False, "fault"), "c": (10.0, None, "down")}
    assert type(current["b"][1]) is bool


async def test_memory_history():
    with HistoryStore(None, memory=True) as history:
        await history.append([("m", 1.0, 1.0, "ok")])
        assert history.query("m") == [{"ts": 1.0, "value": 1.0, "status": "ok"}]
        assert history.append_sync([]) == 0
