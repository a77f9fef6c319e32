/* Vectorized Modbus register decoding and encoding.
 *
 * A value's big-endian byte image A B C D (E F G H) sits in the registers as the order says:
 * ABCD as is; CDAB registers reversed (word swap, "least significant register first");
 * BADC bytes swapped inside each register; DCBA both (fully little-endian).
 * SPDX-License-Identifier: Apache-2.0
 */
#include <math.h>
#include <string.h>
#include "gatewayd_native.h"

static const uint8_t WIDTH[] = {1, 1, 1, 2, 2, 4, 4, 2, 4, 0};

/* assemble nregs registers starting at p into a big-endian byte image according to the order */
static void gather(const uint8_t *p, unsigned nregs, uint8_t order, uint8_t *out) {
    int word_swap = order == GW_O_CDAB || order == GW_O_DCBA;
    int byte_swap = order == GW_O_BADC || order == GW_O_DCBA;
    for (unsigned r = 0; r < nregs; r++) {
        const uint8_t *src = p + 2 * (word_swap ? nregs - 1 - r : r);
        out[2 * r] = byte_swap ? src[1] : src[0];
        out[2 * r + 1] = byte_swap ? src[0] : src[1];
    }
}

static uint64_t be(const uint8_t *b, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = (v << 8) | b[i];
    return v;
}

static unsigned ctz64(uint64_t m) {
    unsigned k = 0;
    while (m && !(m & 1)) { m >>= 1; k++; }
    return k;
}

size_t gw_decode(const gw_spec *specs, size_t n, const uint8_t *payload, size_t len, int bits,
                 double *values, int64_t *ivalues, uint8_t *kinds, uint8_t *strbuf) {
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_spec *s = &specs[i];
        values[i] = 0;
        ivalues[i] = 0;
        if (bits) {
            size_t byte = s->offset / 8;
            if (byte >= len) { kinds[i] = GW_K_MISSING; continue; }
            values[i] = (payload[byte] >> (s->offset % 8)) & 1;
            kinds[i] = GW_K_BOOL;
            ok++;
            continue;
        }
        if (s->type > GW_T_STRING) { kinds[i] = GW_K_MISSING; continue; }
        unsigned nregs = s->type == GW_T_STRING ? s->length : WIDTH[s->type];
        size_t at = (size_t)s->offset * 2;
        if (nregs == 0 || at + 2 * (size_t)nregs > len) { kinds[i] = GW_K_MISSING; continue; }
        if (s->type == GW_T_STRING) {
            int byte_swap = s->order == GW_O_BADC || s->order == GW_O_DCBA;
            for (unsigned b = 0; b < 2 * nregs; b += 2) {
                strbuf[at + b] = byte_swap ? payload[at + b + 1] : payload[at + b];
                strbuf[at + b + 1] = byte_swap ? payload[at + b] : payload[at + b + 1];
            }
            size_t sl = 2 * (size_t)nregs;
            while (sl > 0 && strbuf[at + sl - 1] == 0) sl--;
            ivalues[i] = (int64_t)at;
            values[i] = (double)sl;
            kinds[i] = GW_K_STRING;
            ok++;
            continue;
        }
        uint8_t img[8];
        gather(payload + at, nregs, s->order, img);
        uint64_t raw = be(img, 2 * nregs);
        if (s->bit_offset >= 0) {
            if ((unsigned)s->bit_offset >= 16 * nregs) { kinds[i] = GW_K_MISSING; continue; }
            values[i] = (double)((raw >> s->bit_offset) & 1);
            kinds[i] = GW_K_BOOL;
            ok++;
            continue;
        }
        if (s->bit_mask) {
            raw = (raw & s->bit_mask) >> ctz64(s->bit_mask);
            if (s->type == GW_T_BOOL) { values[i] = raw != 0; kinds[i] = GW_K_BOOL; ok++; continue; }
        }
        double v;
        int is_int = 1;
        int64_t iv = 0;
        switch (s->type) {
        case GW_T_BOOL: values[i] = raw != 0; kinds[i] = GW_K_BOOL; ok++; continue;
        case GW_T_INT16: iv = s->bit_mask ? (int64_t)raw : (int64_t)(int16_t)raw; break;
        case GW_T_UINT16: iv = (int64_t)raw; break;
        case GW_T_INT32: iv = s->bit_mask ? (int64_t)raw : (int64_t)(int32_t)raw; break;
        case GW_T_UINT32: iv = (int64_t)raw; break;
        case GW_T_INT64: iv = (int64_t)raw; break;
        case GW_T_UINT64:
            if (raw > (uint64_t)INT64_MAX) {
                if (s->scale == 1.0 && s->add == 0.0) {
                    ivalues[i] = (int64_t)raw;    /* the bits; Python reads them back unsigned */
                    values[i] = (double)raw;
                    kinds[i] = GW_K_UINT64;
                    ok++;
                    continue;
                }
                is_int = 0; v = (double)raw; break;
            }
            iv = (int64_t)raw; break;
        case GW_T_FLOAT32: { uint32_t u = (uint32_t)raw; float f; memcpy(&f, &u, 4); v = f; is_int = 0; break; }
        case GW_T_FLOAT64: { double d; memcpy(&d, &raw, 8); v = d; is_int = 0; break; }
        default: kinds[i] = GW_K_MISSING; continue;
        }
        if (is_int) {
            if (s->scale == 1.0 && s->add == 0.0) {
                ivalues[i] = iv;
                values[i] = (double)iv;
                kinds[i] = GW_K_INT;
                ok++;
                continue;
            }
            v = (double)iv;
        }
        values[i] = v * s->scale + s->add;
        kinds[i] = GW_K_FLOAT;
        ok++;
    }
    return ok;
}

static void scatter(const uint8_t *img, unsigned nregs, uint8_t order, uint16_t *regs) {
    int word_swap = order == GW_O_CDAB || order == GW_O_DCBA;
    int byte_swap = order == GW_O_BADC || order == GW_O_DCBA;
    for (unsigned r = 0; r < nregs; r++) {
        uint8_t hi = img[2 * r], lo = img[2 * r + 1];
        uint16_t w = byte_swap ? (uint16_t)((lo << 8) | hi) : (uint16_t)((hi << 8) | lo);
        regs[word_swap ? nregs - 1 - r : r] = w;
    }
}

int gw_encode(const gw_spec *s, double value, int64_t ivalue, int use_int, uint16_t *regs, size_t max_regs) {
    if (s->type >= GW_T_STRING) return -3;
    unsigned nregs = WIDTH[s->type];
    if (nregs > max_regs) return -3;
    uint8_t img[8] = {0};
    uint64_t raw;
    if (use_int == 2) {               /* raw 64-bit pattern (uint64 values above INT64_MAX) */
        if (s->type != GW_T_UINT64 || s->scale != 1.0 || s->add != 0.0) return -1;
        raw = (uint64_t)ivalue;
        goto pack;
    }
    int exact = use_int && s->scale == 1.0 && s->add == 0.0;
    double x = exact ? 0 : (value - s->add) / s->scale;
    switch (s->type) {
    case GW_T_BOOL:
        if (!exact && isnan(x)) return -2;
        raw = exact ? (ivalue != 0) : (x != 0);
        break;
    case GW_T_FLOAT32: {
        double d = exact ? (double)ivalue : x;
        if (isfinite(d) && fabs(d) > 3.4028234663852886e38) return -1;   /* NaN and inf pass through */
        float f = (float)d;
        uint32_t u;
        memcpy(&u, &f, 4);
        raw = u;
        break;
    }
    case GW_T_FLOAT64: {
        double d = exact ? (double)ivalue : x;
        memcpy(&raw, &d, 8);
        break;
    }
    default: {
        int64_t lo, hi;
        if (!exact && !isfinite(x)) return -2;
        if (s->type == GW_T_UINT64 && !exact) {
            double r = nearbyint(x);
            if (r < 0 || r >= 18446744073709551616.0) return -1;
            raw = (uint64_t)r;
            break;
        }
        switch (s->type) {
        case GW_T_INT16: lo = -32768; hi = 32767; break;
        case GW_T_UINT16: lo = 0; hi = 65535; break;
        case GW_T_INT32: lo = INT32_MIN; hi = INT32_MAX; break;
        case GW_T_UINT32: lo = 0; hi = UINT32_MAX; break;
        case GW_T_INT64: lo = INT64_MIN; hi = INT64_MAX; break;
        default: lo = 0; hi = INT64_MAX; break;   /* uint64 exact: above INT64_MAX comes as use_int 2 */
        }
        int64_t v;
        if (exact) {
            v = ivalue;
        } else {
            double r = nearbyint(x);
            if (r < -9223372036854775808.0 || r >= 9223372036854775808.0) return -1;
            v = (int64_t)r;
        }
        if (v < lo || v > hi) return -1;
        raw = (uint64_t)v;
        if (nregs < 4) raw &= (nregs == 1 ? 0xFFFFull : 0xFFFFFFFFull);
    }
    }
pack:
    for (unsigned b = 0; b < 2 * nregs; b++) img[b] = (uint8_t)(raw >> (8 * (2 * nregs - 1 - b)));
    scatter(img, nregs, s->order, regs);
    return (int)nregs;
}
