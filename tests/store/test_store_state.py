"""StateStore: priority arrays, audit, kv, discovery."""

from __future__ import annotations

import pytest

from gatewayd.store import StateStore


@pytest.fixture
def state(tmp_path):
    store = StateStore(tmp_path / "state.db")
    yield store
    store.close()


async def test_priority_set_relinquish_load_round_trip(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        await state.set_priority("ahu1/sp", 8, 21.5)
        await state.set_priority("ahu1/sp", 16, 19)
        await state.set_priority("ahu1/sp", 1, True)
        await state.set_priority("ahu1/mode", 10, "auto")
        await state.set_priority("ahu1/sp", 8, 22.0)  # overwrite
        await state.set_priority("ahu1/sp", 1, None)  # relinquish
        await state.set_priority("ahu1/sp", 3, None)  # relinquishing an empty level is fine
        with pytest.raises(ValueError):
            await state.set_priority("ahu1/sp", 17, 1)
    with StateStore(path) as state:  # persisted
        arrays = state.load_priority_arrays()
    assert arrays == {"ahu1/sp": {8: 22.0, 16: 19}, "ahu1/mode": {10: "auto"}}
    assert type(arrays["ahu1/sp"][16]) is int and type(arrays["ahu1/sp"][8]) is float


async def test_audit_filters_newest_first(state):
    await state.audit("alice", "points.write", "ahu1/sp", {"value": 21}, ts=100.0)
    await state.audit("bob", "points.write", "ahu2/sp", {"value": 5}, ok=False, ts=200.0)
    await state.audit("alice", "alarms.ack", "ahu1/hi", {}, ts=300.0)
    await state.audit("root", "config.reload", "gatewayd.toml", {"changed": ["drivers.sim"]}, ts=400.0)
    everything = state.list_audit()
    assert [e["ts"] for e in everything] == [400.0, 300.0, 200.0, 100.0]
    assert everything[2] == {
        "id": 2,
        "ts": 200.0,
        "actor": "bob",
        "action": "points.write",
        "target": "ahu2/sp",
        "detail": {"value": 5},
        "ok": False,
    }
    assert [e["id"] for e in state.list_audit(actor="alice")] == [3, 1]
    assert [e["id"] for e in state.list_audit(action="points.write")] == [2, 1]
    assert [e["id"] for e in state.list_audit(target_glob="ahu1/*")] == [3, 1]
    assert [e["id"] for e in state.list_audit(since=200, until=300)] == [3, 2]
    assert [e["id"] for e in state.list_audit(since=150, actor="alice", action="alarms.ack")] == [3]
    assert [e["id"] for e in state.list_audit(limit=2)] == [4, 3]
    assert await state.prune_audit(250, chunk=1) == 2
    assert [e["id"] for e in state.list_audit()] == [4, 3]


async def test_kv_namespaces(state):
    await state.kv_set("modbus.plc1", "refused/3/100", {"start": 100, "count": 10})
    await state.kv_set("modbus.plc1", "refused/3/200", {"start": 200, "count": 2})
    await state.kv_set("modbus.plc1", "other", [1, 2])
    await state.kv_set("modbus.plc2", "refused/3/100", True)
    assert state.kv_get("modbus.plc1", "refused/3/100") == {"start": 100, "count": 10}
    assert state.kv_get("modbus.plc1", "missing", default="d") == "d"
    assert [k for k, _ in state.kv_items("modbus.plc1", "refused/")] == ["refused/3/100", "refused/3/200"]
    assert state.kv_items("modbus.plc1") == [
        ("other", [1, 2]),
        ("refused/3/100", {"start": 100, "count": 10}),
        ("refused/3/200", {"start": 200, "count": 2}),
    ]
    assert state.kv_items("modbus.plc1", "refused/3/2") == [("refused/3/200", {"start": 200, "count": 2})]
    await state.kv_set("modbus.plc1", "other", None)
    assert state.kv_get("modbus.plc1", "other", "default") is None  # a stored null is not "missing"
    assert await state.kv_delete("modbus.plc1", "other") == 1
    assert await state.kv_delete("modbus.plc1") == 2
    assert state.kv_items("modbus.plc1") == []
    assert state.kv_items("modbus.plc2") == [("refused/3/100", True)]


async def test_discovery_rescan_keeps_decisions(state):
    assert await state.discovery_upsert("bacnet1", "dev:1001", {"name": "AHU-1"}, ts=10) == "discovered"
    await state.discovery_upsert("bacnet1", "dev:1002", {"name": "AHU-2"}, ts=10)
    await state.discovery_upsert("bacnet1", "dev:1003", {"name": "VAV-3"}, ts=10)
    await state.discovery_upsert("modbus1", "unit:1", {"vendor": "x"}, ts=10)
    await state.discovery_set_status("bacnet1", "dev:1001", "accepted")
    await state.discovery_set_status("bacnet1", "dev:1002", "ignored")
    with pytest.raises(KeyError):
        await state.discovery_set_status("bacnet1", "dev:9999", "accepted")
    with pytest.raises(ValueError):
        await state.discovery_set_status("bacnet1", "dev:1001", "maybe")

    # re-scan at t=20 sees 1001 and 1002 (new data) but not 1003
    assert await state.discovery_upsert("bacnet1", "dev:1001", {"name": "AHU-1 renamed"}, ts=20) == "accepted"
    assert await state.discovery_upsert("bacnet1", "dev:1002", {"name": "AHU-2"}, ts=20) == "ignored"
    assert await state.discovery_mark_stale("bacnet1", seen_before=20) == 1
    rows = {r["key"]: r for r in state.discovery_list("bacnet1")}
    assert rows["dev:1001"]["status"] == "accepted"
    assert rows["dev:1001"]["data"] == {"name": "AHU-1 renamed"}
    assert (rows["dev:1001"]["first_seen"], rows["dev:1001"]["last_seen"]) == (10, 20)
    assert rows["dev:1002"]["status"] == "ignored"
    assert rows["dev:1003"]["status"] == "stale"
    assert [r["key"] for r in state.discovery_list(status="stale")] == ["dev:1003"]
    assert [r["driver"] for r in state.discovery_list()] == ["bacnet1"] * 3 + ["modbus1"]
    # seen again: back to discovered
    assert await state.discovery_upsert("bacnet1", "dev:1003", {"name": "VAV-3"}, ts=30) == "discovered"


def test_memory_state_store():
    with StateStore(None, memory=True) as state:
        assert state.path == ":memory:"
        assert state.load_priority_arrays() == {}
