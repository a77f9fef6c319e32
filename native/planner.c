/* Modbus block planner: fewest requests covering every point, never across a refused range.
 * Points are sorted by (table, unit, address, width) — O(n log n) — then a greedy sweep per
 * (table, unit) extends the current block while the gap, the size cap and the refused ranges allow
 * (checked optimal against exhaustive search in tests/native). */
#include <stdlib.h>
#include "gatewayd_native.h"

static int cmp_item(const void *a, const void *b) {
    const gw_sort_item *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    if (x->width != y->width) return x->width < y->width ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* does a refused range of (table, unit) intersect [s, e) (e exclusive)? */
static int refused(const gw_range *f, size_t nf, uint8_t t, uint8_t u, uint64_t s, uint64_t e) {
    for (size_t k = 0; k < nf; k++)
        if (f[k].table == t && f[k].unit == u && f[k].start < e && (uint64_t)f[k].end >= s) return 1;
    return 0;
}

size_t gw_plan(const uint8_t *tables, const uint8_t *units, const uint32_t *addresses, const uint32_t *widths,
               size_t n, uint32_t max_gap, uint32_t max_regs, uint32_t max_bits,
               const gw_range *forbidden, size_t nf, gw_sort_item *order, gw_block *blocks,
               uint32_t *block_first, uint32_t *member_idx, uint32_t *member_off, size_t *n_members,
               uint8_t *error) {
    size_t nb = 0, m = 0;
    for (uint32_t i = 0; i < n; i++) {
        order[i].key = ((uint64_t)tables[i] << 40) | ((uint64_t)units[i] << 32) | addresses[i];
        order[i].width = widths[i];
        order[i].idx = i;
        error[i] = GW_PLAN_OK;
    }
    qsort(order, n, sizeof(gw_sort_item), cmp_item);
    gw_block *cur = NULL;
    uint64_t cur_end = 0;   /* exclusive */
    for (size_t k = 0; k < n; k++) {
        uint32_t i = order[k].idx;
        uint8_t t = tables[i], u = units[i];
        uint32_t cap = t <= 1 ? max_bits : max_regs;
        uint64_t s = addresses[i], e = (uint64_t)addresses[i] + widths[i];
        if (widths[i] == 0) { error[i] = GW_PLAN_ZERO_WIDTH; continue; }
        if (widths[i] > cap) { error[i] = GW_PLAN_TOO_WIDE; continue; }
        if (nf && refused(forbidden, nf, t, u, s, e)) { error[i] = GW_PLAN_FORBIDDEN; continue; }
        if (cur && cur->table == t && cur->unit == u) {
            uint64_t ne = e > cur_end ? e : cur_end;
            int fits = (s <= cur_end || s - cur_end <= max_gap) && ne - cur->start <= cap;
            if (fits && nf && ne > cur_end && refused(forbidden, nf, t, u, cur_end, ne)) fits = 0;
            if (fits) {
                cur_end = ne;
                cur->count = (uint32_t)(cur_end - cur->start);
                member_idx[m] = i;
                member_off[m++] = (uint32_t)(s - cur->start);
                continue;
            }
        }
        block_first[nb] = (uint32_t)m;
        cur = &blocks[nb++];
        cur->table = t;
        cur->unit = u;
        cur->pad = 0;
        cur->start = (uint32_t)s;
        cur->count = widths[i];
        cur_end = e;
        member_idx[m] = i;
        member_off[m++] = 0;
    }
    block_first[nb] = (uint32_t)m;
    *n_members = m;
    return nb;
}
