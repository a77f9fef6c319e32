/* MS/TP framing (BACnet clause 9): encoder, COBS for extended frames, streaming receiver.
 *
 * Receiver rules (tests/native/reference.py restates them byte by byte):
 * - IDLE hunts for 0x55 (memchr); PREAMBLE takes 0xFF, stays on a repeated 0x55, else back to IDLE.
 *   Octets skipped while hunting count as garbage.
 * - HEADER collects type, dest, src, length (2) and the CRC-8. A wrong CRC is reported and the six
 *   octets are rescanned at once, so a real preamble hidden in them is found (resync right away).
 * - Length 0: a frame without data (an extended type with Length 0 is malformed).
 * - Too long for max_data (or for the type: 501 octets unless COBS-encoded): reported as oversize at
 *   once; the data field is then skipped as clause 9 does (SKIP_DATA) when its Length is one a legal
 *   frame can have, else the receiver resyncs on the next octet.
 * - DATA collects Length + 2 octets (data + CRC-16, or encoded data + encoded CRC-32K), then checks.
 *   COBS-encoded fields never contain 0x55, so a 0x55 inside an extended frame means it was cut short:
 *   it is reported as truncated and that 0x55 starts the next preamble.
 * - silence() (T_frame_abort from the caller's timer) reports a frame in progress as truncated.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <string.h>
#include "gatewayd_native.h"

#define IS_EXT(t) ((t) >= 32 && (t) <= 127)
#define MASK 0x55

size_t gw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask) {
    size_t r = 0, w = 0;
    if (len == 0) return 0;
    for (;;) {
        /* one block: a code octet, then up to 254 non-zero data octets */
        size_t code_at = w++;
        uint8_t code = 1;
        if (code_at >= out_size) return 0;
        while (r < len && in[r] != 0 && code < 0xFF) {
            if (w >= out_size) return 0;
            out[w++] = (uint8_t)(in[r++] ^ mask);
            code++;
        }
        out[code_at] = (uint8_t)(code ^ mask);
        if (r == len) return w;   /* end of data: the last block implies the phantom zero (none if full) */
        if (code != 0xFF) r++;    /* the block ended on a zero octet of the data */
    }
}

long gw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask) {
    size_t r = 0, w = 0;
    while (r < len) {
        uint8_t code = (uint8_t)(in[r] ^ mask);
        if (code == 0 || code > len - r) return -1;
        r++;
        for (uint8_t k = 1; k < code; k++) {
            uint8_t b = (uint8_t)(in[r++] ^ mask);
            if (b == 0 || w >= out_size) return -1;   /* an encoder never puts a zero inside a block */
            out[w++] = b;
        }
        if (code != 0xFF && r < len) {
            if (w >= out_size) return -1;
            out[w++] = 0;
        }
    }
    return (long)w;
}

size_t gw_mstp_encode(uint8_t type, uint8_t dest, uint8_t src, const uint8_t *data, size_t len,
                      uint8_t *out, size_t out_size) {
    size_t field, n;
    if (out_size < GW_MSTP_HEADER) return 0;
    if (IS_EXT(type)) {
        if (len == 0 || len > GW_MSTP_MAX_EXT_DATA) return 0;
        size_t enc = gw_cobs_encode(data, len, out + GW_MSTP_HEADER, out_size - GW_MSTP_HEADER, MASK);
        if (enc == 0) return 0;
        uint32_t crc = gw_crc32k(out + GW_MSTP_HEADER, enc);
        uint8_t c[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
        size_t ce = gw_cobs_encode(c, 4, out + GW_MSTP_HEADER + enc, out_size - GW_MSTP_HEADER - enc, MASK);
        if (ce != 5) return 0;
        field = enc + ce - 2;   /* Length: encoded data + encoded CRC-32K, minus two (legacy receivers) */
        n = GW_MSTP_HEADER + enc + ce;
    } else {
        if (len > GW_MSTP_MAX_DATA) return 0;
        field = len;
        n = GW_MSTP_HEADER + len + (len ? 2 : 0);
        if (n > out_size) return 0;
        if (len) {
            memcpy(out + GW_MSTP_HEADER, data, len);
            uint16_t crc = gw_mstp_data_crc(data, len);
            out[GW_MSTP_HEADER + len] = (uint8_t)crc;
            out[GW_MSTP_HEADER + len + 1] = (uint8_t)(crc >> 8);
        }
    }
    out[0] = 0x55;
    out[1] = 0xFF;
    out[2] = type;
    out[3] = dest;
    out[4] = src;
    out[5] = (uint8_t)(field >> 8);
    out[6] = (uint8_t)field;
    out[7] = gw_mstp_header_crc(out + 2, 5);
    return n;
}

/* ------------------------------------------------------------------ receiver */
enum { S_IDLE = 0, S_PREAMBLE, S_HEADER, S_DATA, S_SKIP };

void gw_mstp_rx_init(gw_mstp_rx *rx, uint32_t max_data) {
    memset(rx, 0, offsetof(gw_mstp_rx, buf));
    rx->max_data = max_data > GW_MSTP_MAX_EXT_DATA ? GW_MSTP_MAX_EXT_DATA : max_data;
}

int gw_mstp_rx_silence(gw_mstp_rx *rx) {
    uint8_t st = rx->state;
    rx->state = S_IDLE;
    if (st == S_HEADER || st == S_DATA) {
        rx->truncated++;
        return GW_EV_TRUNCATED;
    }
    if (st == S_PREAMBLE) rx->garbage++;
    return GW_EV_NONE;
}

/* largest Length of an extended frame whose data can decode to max_data octets or fewer */
static uint32_t ext_length_limit(uint32_t max_data) {
    uint32_t l = max_data + max_data / 254 + 1 + 5 - 2;
    return l > GW_MSTP_MAX_LENGTH ? GW_MSTP_MAX_LENGTH : l;
}

static void start_skip(gw_mstp_rx *rx, uint32_t octets) {
    rx->need = octets;
    rx->have = 0;
    rx->state = S_SKIP;
}

static int finish_data(gw_mstp_rx *rx) {
    uint8_t *b = rx->buf;
    rx->state = S_IDLE;
    if (rx->ext) {
        size_t enc = rx->need - 5;
        uint8_t c[4];
        long cl = gw_cobs_decode(b + enc, 5, c, sizeof c, MASK);
        uint32_t got = (uint32_t)c[0] | ((uint32_t)c[1] << 8) | ((uint32_t)c[2] << 16) | ((uint32_t)c[3] << 24);
        if (cl != 4 || got != gw_crc32k(b, enc)) {
            rx->data_crc++;
            return GW_EV_DATA_CRC;
        }
        long dl = gw_cobs_decode(b, enc, b, sizeof rx->buf, MASK);   /* in place */
        if (dl < 0) {
            rx->malformed++;
            return GW_EV_MALFORMED;
        }
        if ((uint32_t)dl > rx->max_data) {
            rx->oversize++;
            return GW_EV_OVERSIZE;
        }
        rx->data_len = (uint32_t)dl;
    } else {
        size_t dl = rx->need - 2;
        uint16_t crc = gw_mstp_data_crc(b, dl);
        if (b[dl] != (uint8_t)crc || b[dl + 1] != (uint8_t)(crc >> 8)) {
            rx->data_crc++;
            return GW_EV_DATA_CRC;
        }
        rx->data_len = (uint32_t)dl;
    }
    rx->frames++;
    return GW_EV_FRAME;
}

static int step(gw_mstp_rx *rx, uint8_t b);

static int header_done(gw_mstp_rx *rx) {
    uint8_t h[6];
    memcpy(h, rx->hdr, 6);
    rx->state = S_IDLE;
    if (gw_mstp_header_crc(h, 5) != h[5]) {
        rx->header_crc++;
        /* Rescan the six octets: from IDLE they can at most start a preamble and part of a header
         * (a header needs eight octets), so this produces no event and cannot recurse further. */
        for (int k = 0; k < 6; k++) (void)step(rx, h[k]);
        return GW_EV_HEADER_CRC;
    }
    uint32_t length = ((uint32_t)h[3] << 8) | h[4];
    rx->frame_type = h[0];
    rx->dest = h[1];
    rx->src = h[2];
    rx->hdr_ok = 1;
    rx->ext = IS_EXT(h[0]);
    if (rx->ext) {
        if (length < GW_MSTP_MIN_EXT_LENGTH) {
            rx->malformed++;
            if (length) start_skip(rx, length + 2);
            return GW_EV_MALFORMED;
        }
        if (length > ext_length_limit(rx->max_data)) {
            rx->oversize++;
            if (length <= GW_MSTP_MAX_LENGTH) start_skip(rx, length + 2);
            return GW_EV_OVERSIZE;
        }
    } else {
        if (length == 0) {
            rx->data_len = 0;
            rx->frames++;
            return GW_EV_FRAME;
        }
        if (length > rx->max_data || length > GW_MSTP_MAX_DATA) {
            rx->oversize++;
            if (length <= GW_MSTP_MAX_DATA) start_skip(rx, length + 2);
            return GW_EV_OVERSIZE;
        }
    }
    rx->need = length + 2;
    rx->have = 0;
    rx->state = S_DATA;
    return GW_EV_NONE;
}

/* one octet in IDLE, PREAMBLE or HEADER */
static int step(gw_mstp_rx *rx, uint8_t b) {
    switch (rx->state) {
    case S_IDLE:
        if (b == 0x55) rx->state = S_PREAMBLE;
        else rx->garbage++;
        return GW_EV_NONE;
    case S_PREAMBLE:
        if (b == 0xFF) {
            rx->state = S_HEADER;
            rx->hdr_n = 0;
            rx->hdr_ok = 0;
        } else if (b == 0x55) {
            rx->garbage++;            /* repeated first preamble octet */
        } else {
            rx->garbage += 2;
            rx->state = S_IDLE;
        }
        return GW_EV_NONE;
    default:                          /* S_HEADER */
        rx->hdr[rx->hdr_n++] = b;
        return rx->hdr_n == 6 ? header_done(rx) : GW_EV_NONE;
    }
}

int gw_mstp_rx_feed(gw_mstp_rx *rx, const uint8_t *in, size_t len, size_t *consumed) {
    size_t i = 0;
    while (i < len) {
        uint8_t st = rx->state;
        if (st == S_IDLE) {
            const uint8_t *p = memchr(in + i, 0x55, len - i);
            if (!p) {
                rx->garbage += len - i;
                i = len;
                break;
            }
            rx->garbage += (size_t)(p - (in + i));
            i = (size_t)(p - in) + 1;
            rx->state = S_PREAMBLE;
        } else if (st == S_DATA || st == S_SKIP) {
            size_t take = rx->need - rx->have, stop;
            if (take > len - i) take = len - i;
            stop = take;
            if (rx->ext) {
                const uint8_t *p = memchr(in + i, 0x55, take);
                if (p) stop = (size_t)(p - (in + i));
            }
            if (st == S_DATA) memcpy(rx->buf + rx->have, in + i, stop);
            rx->have += (uint32_t)stop;
            i += stop;
            if (stop < take) {            /* 0x55 inside COBS data: cut short, a new frame starts */
                i++;
                rx->state = S_PREAMBLE;
                if (st == S_DATA) {
                    rx->truncated++;
                    *consumed = i;
                    return GW_EV_TRUNCATED;
                }
            } else if (rx->have == rx->need) {
                if (st == S_DATA) {
                    *consumed = i;
                    return finish_data(rx);
                }
                rx->state = S_IDLE;
            }
        } else {
            int ev = step(rx, in[i++]);
            if (ev != GW_EV_NONE) {
                *consumed = i;
                return ev;
            }
        }
    }
    *consumed = i;
    return GW_EV_NONE;
}
