/* Modbus block planner: fewest requests covering every point, never across a refused range.
 * Points are sorted by (table, unit, address, width) — O(n log n) — then a greedy sweep per
 * (table, unit) extends the current block while the gap, the size cap and the refused ranges allow. */
#include <stdlib.h>
#include "gatewayd_native.h"

static int cmp_item(const void *a, const void *b) {
    const gw_sort_item *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    if (x->width != y->width) return x->width < y->width ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* first refused range of (table, unit) intersecting [s, e) (e exclusive), or NULL */
static const gw_range *refused(const gw_range *f, size_t nf, uint8_t t, uint8_t u, uint64_t s, uint64_t e) {
    for (size_t k = 0; k < nf; k++)
        if (f[k].table == t && f[k].unit == u && f[k].start < e && (uint64_t)f[k].end >= s) return &f[k];
    return NULL;
}

size_t gw_plan(const gw_plan_point *pts, size_t n, uint32_t max_gap, uint32_t max_regs, uint32_t max_bits,
               const gw_range *forbidden, size_t nf, gw_sort_item *order, gw_block *blocks,
               int32_t *block_of, uint32_t *offset, uint8_t *error) {
    size_t nb = 0;
    for (uint32_t i = 0; i < n; i++) {
        order[i].key = ((uint64_t)pts[i].table << 40) | ((uint64_t)pts[i].unit << 32) | pts[i].address;
        order[i].width = pts[i].width;
        order[i].idx = i;
        block_of[i] = -1; offset[i] = 0; error[i] = GW_PLAN_OK;
    }
    qsort(order, n, sizeof(gw_sort_item), cmp_item);
    gw_block *cur = NULL;
    uint64_t cur_end = 0;   /* exclusive */
    for (size_t k = 0; k < n; k++) {
        uint32_t i = order[k].idx;
        const gw_plan_point *p = &pts[i];
        uint32_t cap = p->table <= 1 ? max_bits : max_regs;
        uint64_t s = p->address, e = (uint64_t)p->address + p->width;
        if (p->width == 0) { error[i] = GW_PLAN_ZERO_WIDTH; continue; }
        if (p->width > cap) { error[i] = GW_PLAN_TOO_WIDE; continue; }
        if (nf && refused(forbidden, nf, p->table, p->unit, s, e)) { error[i] = GW_PLAN_FORBIDDEN; continue; }
        if (cur && cur->table == p->table && cur->unit == p->unit) {
            uint64_t ne = e > cur_end ? e : cur_end;
            int fits = (s <= cur_end || s - cur_end <= max_gap) && ne - cur->start <= cap;
            if (fits && nf && ne > cur_end && refused(forbidden, nf, p->table, p->unit, cur_end, ne)) fits = 0;
            if (fits) {
                cur_end = ne;
                cur->count = (uint32_t)(cur_end - cur->start);
                block_of[i] = (int32_t)(cur - blocks);
                offset[i] = (uint32_t)(s - cur->start);
                continue;
            }
        }
        cur = &blocks[nb++];
        cur->table = p->table;
        cur->unit = p->unit;
        cur->pad = 0;
        cur->start = p->address;
        cur->count = p->width;
        cur_end = e;
        block_of[i] = (int32_t)(cur - blocks);
        offset[i] = 0;
    }
    return nb;
}
