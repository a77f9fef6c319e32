/* MS/TP framing (BACnet clause 9): encoder, COBS for extended frames, streaming receiver. */
#include <string.h>
#include "gatewayd_native.h"

#define IS_COBS(t) ((t) >= 32 && (t) <= 127)

size_t gw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask) {
    /* classic COBS (a phantom zero ends the data), every output octet XOR mask */
    size_t code_at = 0, w = 1;
    uint8_t code = 1;
    if (out_size < 1) return 0;
    for (size_t r = 0; r < len; r++) {
        if (in[r] != 0) {
            if (w >= out_size) return 0;
            out[w++] = in[r] ^ mask;
            code++;
            if (code != 0xFF) continue;
            /* a full block of 254 non-zero octets */
            out[code_at] = code ^ mask;
            code = 1;
            if (r + 1 == len) return w;      /* ends exactly on a full block: no phantom zero block */
            code_at = w++;
            if (code_at >= out_size) return 0;
            continue;
        }
        out[code_at] = code ^ mask;
        code = 1;
        code_at = w++;
        if (code_at >= out_size) return 0;
    }
    out[code_at] = code ^ mask;
    return w;
}

size_t gw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask, int *ok) {
    size_t r = 0, w = 0;
    *ok = 0;
    while (r < len) {
        uint8_t code = in[r] ^ mask;
        if (code == 0 || r + code > len) return 0;
        r++;
        for (uint8_t k = 1; k < code; k++) {
            if (w >= out_size) return 0;
            out[w++] = in[r++] ^ mask;
        }
        if (code != 0xFF && r < len) {
            if (w >= out_size) return 0;
            out[w++] = 0;
        }
    }
    *ok = 1;
    return w;
}

size_t gw_mstp_encode(uint8_t type, uint8_t dest, uint8_t src, const uint8_t *data, size_t len,
                      uint8_t *out, size_t out_size) {
    size_t n, field;
    if (out_size < GW_MSTP_HEADER) return 0;
    out[0] = 0x55;
    out[1] = 0xFF;
    out[2] = type;
    out[3] = dest;
    out[4] = src;
    if (IS_COBS(type)) {
        size_t enc = gw_cobs_encode(data, len, out + GW_MSTP_HEADER, out_size - GW_MSTP_HEADER, 0x55);
        if (enc == 0 || len == 0) return 0;
        uint32_t crc = gw_crc32k(out + GW_MSTP_HEADER, enc);
        uint8_t c[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
        size_t ce = gw_cobs_encode(c, 4, out + GW_MSTP_HEADER + enc, out_size - GW_MSTP_HEADER - enc, 0x55);
        if (ce != 5) return 0;
        field = enc + ce - 2;          /* Length: encoded data + encoded CRC, minus two */
        if (field > GW_MSTP_MAX_EXT) return 0;
        n = GW_MSTP_HEADER + enc + ce;
    } else {
        if (len > 501 && !(type >= 128)) return 0;
        if (len > 0xFFFF) return 0;
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
    out[5] = (uint8_t)(field >> 8);
    out[6] = (uint8_t)field;
    out[7] = gw_mstp_header_crc(out + 2, 5);
    return n;
}

/* ------------------------------------------------------------------ receiver */
enum { S_IDLE = 0, S_PREAMBLE, S_HEADER, S_DATA };

void gw_mstp_rx_init(gw_mstp_rx *rx, size_t max_data) {
    memset(rx, 0, offsetof(gw_mstp_rx, buf));
    if (max_data > GW_MSTP_MAX_EXT) max_data = GW_MSTP_MAX_EXT;
    rx->max_data = max_data;
}

int gw_mstp_rx_silence(gw_mstp_rx *rx) {
    if (rx->state == S_HEADER || rx->state == S_DATA) {
        rx->state = S_IDLE;
        rx->truncated++;
        return GW_EV_TRUNCATED;
    }
    if (rx->state == S_PREAMBLE) rx->garbage++;
    rx->state = S_IDLE;
    return GW_EV_NONE;
}

static int finish_data(gw_mstp_rx *rx) {
    rx->state = S_IDLE;
    if (IS_COBS(rx->frame_type)) {
        size_t enc = rx->need - 5;
        uint32_t crc = gw_crc32k(rx->buf, enc);
        uint8_t c[4];
        int ok;
        size_t cl = gw_cobs_decode(rx->buf + enc, 5, c, 4, 0x55, &ok);
        uint32_t got = (uint32_t)c[0] | ((uint32_t)c[1] << 8) | ((uint32_t)c[2] << 16) | ((uint32_t)c[3] << 24);
        if (!ok || cl != 4 || got != crc) { rx->data_crc++; return GW_EV_DATA_CRC; }
        uint8_t *dst = rx->buf + GW_MSTP_MAX_EXT + 8;
        size_t dl = gw_cobs_decode(rx->buf, enc, dst, GW_MSTP_MAX_EXT + 8, 0x55, &ok);
        if (!ok || dl > rx->max_data) { rx->data_crc++; return GW_EV_DATA_CRC; }
        memmove(rx->buf, dst, dl);
        rx->data_len = dl;
    } else {
        size_t dl = rx->need - 2;
        uint16_t crc = gw_mstp_data_crc(rx->buf, dl);
        if (rx->buf[dl] != (uint8_t)crc || rx->buf[dl + 1] != (uint8_t)(crc >> 8)) {
            rx->data_crc++;
            return GW_EV_DATA_CRC;
        }
        rx->data_len = dl;
    }
    rx->frames++;
    return GW_EV_FRAME;
}

static int header_done(gw_mstp_rx *rx) {
    uint8_t *h = rx->hdr;
    if (gw_mstp_header_crc(h, 5) != h[5]) {
        rx->header_crc++;
        rx->state = S_IDLE;
        memcpy(rx->pending, h, 6);    /* a real preamble may hide in there: rescan it */
        rx->pending_n = 6;
        rx->pending_i = 0;
        return GW_EV_HEADER_CRC;
    }
    rx->frame_type = h[0];
    rx->dest = h[1];
    rx->src = h[2];
    size_t field = ((size_t)h[3] << 8) | h[4];
    if (field == 0) {
        rx->data_len = 0;
        rx->state = S_IDLE;
        if (IS_COBS(rx->frame_type)) { rx->data_crc++; return GW_EV_DATA_CRC; }
        rx->frames++;
        return GW_EV_FRAME;
    }
    size_t limit;
    if (IS_COBS(rx->frame_type)) limit = rx->max_data + rx->max_data / 254 + 1 + 3;   /* encoded size - 2 */
    else if (rx->frame_type >= 128) limit = rx->max_data;                            /* proprietary */
    else limit = rx->max_data < 501 ? rx->max_data : 501;                             /* clause 9: 501 */
    if (field > limit || (IS_COBS(rx->frame_type) && field < 5)) {
        rx->oversize++;
        rx->state = S_IDLE;
        return GW_EV_OVERSIZE;
    }
    rx->need = field + 2;   /* data + CRC-16, or encoded data + encoded CRC-32K (Length + 2) */
    rx->have = 0;
    rx->state = S_DATA;
    return GW_EV_NONE;
}

/* process one byte in the header-or-earlier states; returns an event */
static int step(gw_mstp_rx *rx, uint8_t b) {
    switch (rx->state) {
    case S_IDLE:
        if (b == 0x55) rx->state = S_PREAMBLE;
        else rx->garbage++;
        return GW_EV_NONE;
    case S_PREAMBLE:
        if (b == 0xFF) { rx->state = S_HEADER; rx->hdr_n = 0; }
        else if (b == 0x55) rx->garbage++;
        else { rx->garbage += 2; rx->state = S_IDLE; }
        return GW_EV_NONE;
    case S_HEADER:
        rx->hdr[rx->hdr_n++] = b;
        if (rx->hdr_n == 6) return header_done(rx);
        return GW_EV_NONE;
    }
    return GW_EV_NONE;
}

int gw_mstp_rx_feed(gw_mstp_rx *rx, const uint8_t *in, size_t len, size_t *consumed) {
    size_t i = 0;
    int ev;
    for (;;) {
        /* bytes of a rejected header are rescanned first */
        while (rx->pending_i < rx->pending_n) {
            uint8_t b = rx->pending[rx->pending_i++];
            if (rx->state == S_DATA) {       /* a header found inside the pending bytes */
                rx->buf[rx->have++] = b;
                if (rx->have == rx->need) { *consumed = i; return finish_data(rx); }
                continue;
            }
            ev = step(rx, b);
            if (ev != GW_EV_NONE) { *consumed = i; return ev; }
        }
        if (i >= len) break;
        if (rx->state == S_IDLE) {
            const uint8_t *p = memchr(in + i, 0x55, len - i);
            if (!p) { rx->garbage += len - i; i = len; break; }
            rx->garbage += (size_t)(p - (in + i));
            i = (size_t)(p - in) + 1;
            rx->state = S_PREAMBLE;
            continue;
        }
        if (rx->state == S_DATA) {
            size_t take = rx->need - rx->have;
            if (take > len - i) take = len - i;
            memcpy(rx->buf + rx->have, in + i, take);
            rx->have += take;
            i += take;
            if (rx->have == rx->need) { *consumed = i; return finish_data(rx); }
            continue;
        }
        ev = step(rx, in[i++]);
        if (ev != GW_EV_NONE) { *consumed = i; return ev; }
    }
    *consumed = i;
    return GW_EV_NONE;
}
