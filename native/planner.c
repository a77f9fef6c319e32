/* Modbus block planner: the fewest requests covering every point, never across a refused range.
 *
 * Points that can be planned are radix-sorted by (table, unit, address, width, input index) —
 * linear, stable, so the result is deterministic — then one sweep per (table, unit) extends the
 * current block with the next point while (a) the gap from the block's covered end is at most
 * max_gap, (b) the block stays within the size cap, (c) the registers added (gap included) hit no
 * refused range; otherwise the point opens a new block. This greedy sweep is optimal: when a point
 * p cannot join the current block because of the cap, every later point that still could lies
 * inside p (it starts no earlier and ends below the cap), so it fits p's block; when p fails on the
 * gap or a refused range in the gap, no later point (starting at or after p) can join either.
 * Joining never hurts: it only moves the covered end forward, within the cap, over checked registers.
 * tests/native checks the block counts against an exhaustive search over set partitions.
 * Refused ranges are sorted and merged once (O(f log f)); the sweep checks them with cursors that only
 * move forward (O(n + f) in all).
 * SPDX-License-Identifier: Apache-2.0
 */
#include <stdlib.h>
#include <string.h>
#include "gatewayd_native.h"

#define TU(t, u) (((uint32_t)(t) << 8) | (uint32_t)(u))

static int cmp_range(const void *a, const void *b) {
    const gw_range *x = a, *y = b;
    uint64_t kx = ((uint64_t)TU(x->table, x->unit) << 32) | x->start;
    uint64_t ky = ((uint64_t)TU(y->table, y->unit) << 32) | y->start;
    if (kx != ky) return kx < ky ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

/* sort by (table, unit, start) and merge overlapping or adjacent ranges; returns the new count */
static size_t merge_ranges(gw_range *f, size_t nf) {
    size_t m = 0;
    if (nf == 0) return 0;
    qsort(f, nf, sizeof *f, cmp_range);
    for (size_t k = 1; k < nf; k++) {
        if (f[k].table == f[m].table && f[k].unit == f[m].unit && (uint64_t)f[k].start <= (uint64_t)f[m].end + 1) {
            if (f[k].end > f[m].end) f[m].end = f[k].end;
        } else {
            f[++m] = f[k];
        }
    }
    return m + 1;
}

/* does a refused range of tu intersect [s, e) (e exclusive, e > s)? */
static int refused(const gw_range *f, size_t nf, uint32_t tu, uint64_t s, uint64_t e) {
    uint64_t want = ((uint64_t)tu << 32) | s;
    size_t lo = 0, hi = nf;
    while (lo < hi) {      /* first range whose (tu, end) >= (tu, s): ends are sorted after merging */
        size_t mid = lo + (hi - lo) / 2;
        uint64_t k = ((uint64_t)TU(f[mid].table, f[mid].unit) << 32) | f[mid].end;
        if (k < want) lo = mid + 1;
        else hi = mid;
    }
    return lo < nf && TU(f[lo].table, f[lo].unit) == tu && f[lo].start < e;
}

/* the same question for queries in ascending (tu, s) order, as the sweep asks them: *cursor remembers
 * where the last answer was found, so a sweep costs O(n + f) instead of O(n log f). A query below the
 * cursor (never made by the sweep) falls back to the binary search. */
static int refused_seq(const gw_range *f, size_t nf, size_t *cursor, uint32_t tu, uint64_t s, uint64_t e) {
    uint64_t want = ((uint64_t)tu << 32) | s;
    size_t lo = *cursor;
    if (lo > 0 && (((uint64_t)TU(f[lo - 1].table, f[lo - 1].unit) << 32) | f[lo - 1].end) >= want)
        return refused(f, nf, tu, s, e);
    while (lo < nf && ((((uint64_t)TU(f[lo].table, f[lo].unit) << 32) | f[lo].end) < want)) lo++;
    *cursor = lo;
    return lo < nf && TU(f[lo].table, f[lo].unit) == tu && f[lo].start < e;
}

/* stable LSD radix sort on the low 48 bits of key, 8 bits a pass, skipping bytes all keys share */
static void radix_sort(gw_sort_item *a, gw_sort_item *tmp, size_t n) {
    uint64_t any = 0, all = ~(uint64_t)0;
    size_t count[256];
    gw_sort_item *src = a, *dst = tmp;
    for (size_t i = 0; i < n; i++) {
        any |= a[i].key;
        all &= a[i].key;
    }
    for (unsigned shift = 0; shift < 48; shift += 8) {
        if ((((any ^ all) >> shift) & 0xFF) == 0) continue;
        memset(count, 0, sizeof count);
        for (size_t i = 0; i < n; i++) count[(src[i].key >> shift) & 0xFF]++;
        for (size_t d = 0, sum = 0; d < 256; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) dst[count[(src[i].key >> shift) & 0xFF]++] = src[i];
        gw_sort_item *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof *a);
}

size_t gw_plan(const uint32_t *points, size_t n, uint32_t max_gap, uint32_t max_regs, uint32_t max_bits,
               gw_range *forbidden, size_t nf, gw_sort_item *order, uint32_t *blocks, uint32_t *block_first,
               uint32_t *members, uint8_t *error) {
    size_t k = 0, nb = 0, m = 0;
    if (max_regs > 0xFFFF) max_regs = 0xFFFF;
    if (max_bits > 0xFFFF) max_bits = 0xFFFF;
    nf = merge_ranges(forbidden, nf);
    for (size_t i = 0; i < n; i++) {
        const uint32_t *p = points + 4 * i;
        uint32_t t = p[0], u = p[1];
        uint64_t a = p[2], w = p[3];
        uint8_t e = GW_PLAN_OK;
        if (t > 3) e = GW_PLAN_TABLE;
        else if (u > 255) e = GW_PLAN_UNIT;
        else if (w == 0) e = GW_PLAN_ZERO_WIDTH;
        else if (w > (t <= 1 ? max_bits : max_regs)) e = GW_PLAN_TOO_WIDE;
        else if (a + w > 0x10000) e = GW_PLAN_ADDRESS;
        error[i] = e;   /* (refused ranges are checked in the sweep below, in address order) */
        if (e != GW_PLAN_OK) continue;
        order[k].key = ((uint64_t)TU(t, u) << 32) | (a << 16) | w;
        order[k].idx = (uint32_t)i;
        order[k].pad = 0;
        k++;
    }
    radix_sort(order, order + n, k);

    uint32_t *cur = NULL;     /* table, unit, start, count */
    uint32_t cur_tu = 0, cap = 0;
    uint64_t cur_end = 0;     /* exclusive end of the registers (bits) covered so far */
    size_t point_cursor = 0, gap_cursor = 0;
    for (size_t j = 0; j < k; j++) {
        uint32_t i = order[j].idx, tu = (uint32_t)(order[j].key >> 32);
        uint64_t s = points[4 * i + 2], e = s + points[4 * i + 3];
        if (nf && refused_seq(forbidden, nf, &point_cursor, tu, s, e)) {
            error[i] = GW_PLAN_FORBIDDEN;
            continue;
        }
        if (cur && cur_tu == tu) {
            uint64_t ne = e > cur_end ? e : cur_end;
            int fits = (s <= cur_end || s - cur_end <= max_gap) && ne - cur[2] <= cap;
            if (fits && ne > cur_end && nf && refused_seq(forbidden, nf, &gap_cursor, tu, cur_end, ne)) fits = 0;
            if (fits) {
                cur_end = ne;
                cur[3] = (uint32_t)(cur_end - cur[2]);
                members[2 * m] = i;
                members[2 * m + 1] = (uint32_t)(s - cur[2]);
                m++;
                continue;
            }
        }
        block_first[nb] = (uint32_t)m;
        cur = blocks + 4 * nb++;
        cur_tu = tu;
        cap = (tu >> 8) <= 1 ? max_bits : max_regs;
        cur[0] = tu >> 8;
        cur[1] = tu & 0xFF;
        cur[2] = (uint32_t)s;
        cur[3] = (uint32_t)(e - s);
        cur_end = e;
        members[2 * m] = i;
        members[2 * m + 1] = 0;
        m++;
    }
    block_first[nb] = (uint32_t)m;
    return nb;
}
