"""Block planner: optimality against exhaustive search, the rules as properties, errors, determinism, scale."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_support import budget

import reference as ref
from gatewayd.native.planner import Block, PlanInput, PlanPoint, Table, plan

H, I, C, D = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE


def check_rules(pts, p, max_gap, cap_regs, cap_bits, forbidden):
    """Every plannable point in exactly one block; blocks within their caps, clear of forbidden ranges,
    gaps between members within max_gap, offsets right."""
    seen = []
    for b in p.blocks:
        cap = cap_bits if b.table <= 1 else cap_regs
        assert 1 <= b.count <= cap and b.start + b.count <= 65536
        for t, u, s, e in forbidden:
            assert not (t == b.table and u == b.unit and s < b.start + b.count and e >= b.start)
        members = [i for i, _ in b.members]
        assert ref.block_ok(pts, members, max_gap, cap_regs, cap_bits, forbidden)
        ends = []
        for i, off in b.members:
            t, u, a, w = pts[i]
            assert (t, u) == (b.table, b.unit) and a == b.start + off and off + w <= b.count
            ends.append(off + w)
            seen.append(i)
        assert b.members[0][1] == 0 and max(ends) == b.count          # no register read for nothing at the ends
    assert sorted(seen) == sorted(set(range(len(pts))) - set(p.errors))


def test_basic_gap_cap_and_forbidden():
    pts = [(H, 1, 0, 2), (H, 1, 12, 1), (H, 1, 13, 2), (H, 1, 200, 1), (I, 1, 0, 1), (H, 2, 0, 1)]
    p = plan(pts, max_gap=10)
    assert p.blocks == [Block.of(2, 1, 0, 15, ((0, 0), (1, 12), (2, 13))), Block.of(2, 1, 200, 1, ((3, 0),)),
                        Block.of(2, 2, 0, 1, ((5, 0),)), Block.of(3, 1, 0, 1, ((4, 0),))]
    p = plan(pts, max_gap=10, forbidden=[(H, 1, 5, 5)])
    assert [(b.start, b.count) for b in p.blocks if (b.table, b.unit) == (H, 1)] == [(0, 2), (12, 3), (200, 1)]
    assert plan(pts, max_gap=9).blocks[0] == Block.of(2, 1, 0, 2, ((0, 0),))
    assert plan([(H, 1, 0, 1), (H, 1, 200, 1)], max_gap=500).blocks == [Block.of(2, 1, 0, 1, ((0, 0),)),
                                                                        Block.of(2, 1, 200, 1, ((1, 0),))]


def test_per_point_errors_never_raise():
    pts = [(H, 1, 0, 1), (H, 1, 130, 1), (H, 1, 2, 200), (H, 1, 7, 1), (H, 1, 65535, 2), (H, 1, 5, 0),
           (7, 1, 0, 1), (H, 300, 0, 1), (H, 1, -1, 1), (C, 1, 0, 2001), PlanPoint(D, 1, 0, 2000)]
    p = plan(pts, max_registers=125, forbidden=[(H, 1, 7, 7)])
    assert p.errors == {2: "wider than the largest request allowed",
                        3: "inside an address range the device refused (exception 02/03)",
                        4: "beyond the Modbus address space (0..65535)", 5: "width must be at least 1",
                        6: "table must be 0..3 (coil, discrete, holding, input)", 7: "unit must be 0..255",
                        8: "beyond the Modbus address space (0..65535)", 9: "wider than the largest request allowed"}
    assert [b.members for b in p.blocks] == [((10, 0),), ((0, 0),), ((1, 0),)]
    assert plan(PlanInput(pts), max_registers=125, forbidden=[(H, 1, 7, 7)]) == p
    with pytest.raises(ValueError, match="every point is \\(table, unit, address, width\\)"):
        PlanInput([(H, 1, 0)])


def test_duplicates_overlaps_and_wide_points():
    pts = [(H, 1, 10, 4), (H, 1, 10, 4), (H, 1, 11, 1), (H, 1, 12, 2), (H, 1, 8, 10)]
    p = plan(pts)
    assert p.blocks == [Block.of(2, 1, 8, 10, ((4, 0), (0, 2), (1, 2), (2, 3), (3, 4)))]


def test_caps_and_argument_checks():
    pts = [(H, 1, a, 1) for a in range(0, 300)]
    assert [b.count for b in plan(pts).blocks] == [125, 125, 50]
    assert [b.count for b in plan(pts, max_registers=100).blocks] == [100, 100, 100]
    bits = [(C, 1, a, 1) for a in range(0, 4500, 3)]
    assert [b.count for b in plan(bits).blocks] == [1999, 1999, 496]
    with pytest.raises(ValueError):
        plan(pts, max_registers=0)
    with pytest.raises(ValueError):
        plan(pts, forbidden=[(H, 1, 5, 4)])
    with pytest.raises(ValueError):
        plan([(H, 1, 0)])
    assert plan([]) == ([], {})


point = st.tuples(st.sampled_from([C, H, I]), st.sampled_from([1, 2]), st.integers(0, 50), st.integers(1, 6))
ranges = st.lists(st.tuples(st.sampled_from([C, H, I]), st.sampled_from([1, 2]), st.integers(0, 55),
                            st.integers(0, 3)), max_size=3)


@settings(max_examples=budget(2000), deadline=None)
@given(st.lists(point, min_size=1, max_size=7), st.integers(0, 6), st.integers(3, 20), ranges)
def test_optimal_on_small_inputs_and_rules_hold(pts, gap, cap, fb):
    forbidden = [(t, u, s, s + w) for t, u, s, w in fb]
    p = plan(pts, max_gap=gap, max_registers=cap, max_bits=cap + 3, forbidden=forbidden)
    check_rules(pts, p, gap, cap, cap + 3, forbidden)
    ok = [pts[i] for i in range(len(pts)) if i not in p.errors]
    for i, msg in p.errors.items():
        t, u, a, w = pts[i]
        assert w > (cap + 3 if t <= 1 else cap) or any(
            (ft, fu) == (t, u) and fs < a + w and fe >= a for ft, fu, fs, fe in forbidden), msg
    assert len(p.blocks) == ref.plan_min_blocks(ok, gap, cap, cap + 3, forbidden)


@settings(max_examples=budget(300), deadline=None)
@given(st.lists(st.tuples(st.sampled_from([C, D, H, I]), st.integers(0, 3), st.integers(0, 65535),
                          st.integers(1, 130)), max_size=400),
       st.integers(0, 50), st.integers(1, 125), st.integers(1, 2000), ranges)
def test_rules_hold_at_any_scale(pts, gap, cap, bits, fb):
    forbidden = [(t, u, s * 1000, s * 1000 + w * 7) for t, u, s, w in fb]
    p = plan(pts, max_gap=gap, max_registers=cap, max_bits=bits, forbidden=forbidden)
    check_rules(pts, p, gap, cap, bits, forbidden)
    prepared = PlanInput(pts)  # packed once, planned twice (its scratch space is reused): same plans
    assert plan(prepared, max_gap=gap, max_registers=cap, max_bits=bits, forbidden=forbidden) == p
    assert plan(prepared, max_gap=gap, max_registers=cap, max_bits=bits, forbidden=forbidden) == p
    assert plan(list(reversed(pts)), max_gap=gap, max_registers=cap, max_bits=bits,
                forbidden=forbidden).blocks.__len__() == len(p.blocks)


def test_deterministic_and_10k_points():
    rnd = random.Random(3)
    pts = [(rnd.choice([H, I]), rnd.randrange(1, 4), rnd.randrange(0, 20000), rnd.choice([1, 2, 4]))
           for _ in range(10_000)]
    a = plan(pts)
    assert a == plan(pts) and not a.errors
    assert sum(len(b.members) for b in a.blocks) == 10_000
    check_rules(pts, a, 10, 125, 2000, ())
