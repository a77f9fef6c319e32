/* Modbus RTU response scanner: find the response to one request in a byte stream.
 *
 * A candidate is a position holding the expected unit followed by the function code (or the
 * function code | 0x80: a five-octet exception response). Its length comes from what the request
 * expects (fixed, byte count, FIFO count, the device-identification objects) or, for functions of
 * unknown layout, from the shortest CRC-valid length. The first complete candidate with a good CRC
 * wins, even when an earlier candidate is still incomplete (a false candidate in noise claiming a
 * long byte count does not hold up the real answer behind it). Candidates rejected by their CRC
 * are counted once and never re-checked. Octets dropped without being part of the response are
 * garbage. The buffer holds at most two of the longest frames: everything before the first
 * incomplete candidate is dropped at once, and an incomplete candidate is shorter than 256 octets.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <string.h>
#include "gatewayd_native.h"

#define MAX_ADU 256

void gw_rtu_rx_init(gw_rtu_rx *rx) {
    memset(rx, 0, sizeof *rx);
}

static void drop(gw_rtu_rx *rx, size_t k) {
    if (k == 0) return;
    memmove(rx->buf, rx->buf + k, rx->len - k);
    memmove(rx->rejected, rx->rejected + k, rx->len - k);
    rx->len = (uint16_t)(rx->len - k);
}

void gw_rtu_rx_expect(gw_rtu_rx *rx, uint8_t unit, uint8_t function, uint8_t mode, uint16_t expect) {
    drop(rx, rx->taken);
    rx->taken = 0;
    rx->garbage += rx->len;
    rx->len = 0;
    rx->unit = unit;
    rx->function = function;
    rx->mode = mode;
    rx->expect = expect;
    rx->frame_len = 0;
    rx->exception = 0;
}

static int crc_ok(const uint8_t *f, size_t n) {
    uint16_t crc = gw_crc16_modbus(f, n - 2);
    return f[n - 2] == (uint8_t)crc && f[n - 1] == (uint8_t)(crc >> 8);
}

/* Shortest length 4..256 whose last two octets are the CRC of the rest; 0 if none within avail. */
static size_t crc_search(const uint8_t *b, size_t avail) {
    size_t maxn = avail < MAX_ADU ? avail : MAX_ADU;
    uint16_t crc = 0xFFFF;
    for (size_t k = 0; k + 2 <= maxn; k++) {   /* crc covers b[0 .. k) */
        if (k >= 2 && b[k] == (uint8_t)crc && b[k + 1] == (uint8_t)(crc >> 8)) return k + 2;
        crc ^= b[k];
        for (int bit = 0; bit < 8; bit++) crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0xA001) : (uint16_t)(crc >> 1);
    }
    return 0;
}

/* 1: a response at p (frame_len, exception set); 0: incomplete; -1: none at p */
static int candidate(gw_rtu_rx *rx, size_t p) {
    const uint8_t *b = rx->buf + p;
    size_t avail = rx->len - p, need;
    if (rx->rejected[p]) return -1;
    if (avail < 2) return 0;
    if (b[1] == (uint8_t)(rx->function | 0x80)) {
        need = 5;
    } else if (b[1] != rx->function) {
        return -1;
    } else {
        switch (rx->mode) {
        case GW_RTU_FIXED:
            need = rx->expect;
            break;
        case GW_RTU_COUNT:
        case GW_RTU_ANY_COUNT:
            if (avail < 3) return 0;
            if (rx->mode == GW_RTU_COUNT && b[2] != rx->expect) return -1;
            need = 5 + (size_t)b[2];
            break;
        case GW_RTU_FIFO:          /* FC24: FIFO byte count (2 octets) then that many octets */
            if (avail < 4) return 0;
            need = 4 + (((size_t)b[2] << 8) | b[3]) + 2;
            break;
        case GW_RTU_DEVICE_ID:     /* FC43 / MEI 14: 8 octets, then objects (id, length, value) */
            if (avail < 3) return 0;
            if (b[2] == 0x0E) {
                if (avail < 8) return 0;
                need = 8;
                for (unsigned o = 0; o < b[7] && need <= MAX_ADU; o++) {
                    if (avail < need + 2) return 0;
                    need += 2 + (size_t)b[need + 1];
                }
                need += 2;
                break;
            }
            /* another MEI type: layout unknown */
            /* fall through */
        default: {                 /* GW_RTU_VARIABLE */
            size_t n = crc_search(b, avail);
            if (n) {
                rx->frame_len = (uint16_t)n;
                rx->exception = 0;
                return 1;
            }
            if (avail < MAX_ADU) return 0;
            rx->rejected[p] = 1;
            rx->bad_crc++;
            return -1;
        }
        }
    }
    if (need < 4 || need > MAX_ADU) {     /* no valid response is that long (or that short) */
        rx->rejected[p] = 1;
        return -1;
    }
    if (avail < need) return 0;
    if (!crc_ok(b, need)) {
        rx->rejected[p] = 1;
        rx->bad_crc++;
        return -1;
    }
    rx->frame_len = (uint16_t)need;
    rx->exception = need == 5 && b[1] == (uint8_t)(rx->function | 0x80) ? b[2] : 0;
    return 1;
}

/* returns 1 with *at = the response's position, or 0 with *at = the first incomplete candidate */
static int scan(gw_rtu_rx *rx, size_t *at) {
    size_t first = rx->len, p = 0;
    while (p < rx->len) {
        const uint8_t *u = memchr(rx->buf + p, rx->unit, rx->len - p);
        if (!u) break;
        p = (size_t)(u - rx->buf);
        int r = candidate(rx, p);
        if (r == 1) {
            *at = p;
            return 1;
        }
        if (r == 0 && first == rx->len) first = p;
        p++;
    }
    *at = first;
    return 0;
}

int gw_rtu_rx_feed(gw_rtu_rx *rx, const uint8_t *in, size_t len, size_t *consumed) {
    size_t i = 0;
    drop(rx, rx->taken);                 /* the response reported by the previous call */
    rx->taken = 0;
    for (;;) {
        size_t room = GW_RTU_BUF - rx->len, take = len - i < room ? len - i : room, at;
        memcpy(rx->buf + rx->len, in + i, take);
        memset(rx->rejected + rx->len, 0, take);
        rx->len = (uint16_t)(rx->len + take);
        i += take;
        int found = scan(rx, &at);
        rx->garbage += at;
        drop(rx, at);
        if (found) {
            rx->taken = rx->frame_len;
            *consumed = i;
            return GW_RTU_FOUND;
        }
        if (i == len) {
            *consumed = i;
            return GW_RTU_NEED_MORE;
        }
    }
}
