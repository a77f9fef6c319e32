/* Modbus RTU response scanner: find the response frame in a byte stream, knowing the request. */
#include "gatewayd_native.h"

static int crc_ok(const uint8_t *f, size_t n) {
    uint16_t crc = gw_crc16_modbus(f, n - 2);
    return f[n - 2] == (uint8_t)crc && f[n - 1] == (uint8_t)(crc >> 8);
}

/* byte_count >= 0: a read response "unit fn bc data crc" whose bc must equal it (or any bc if -2);
 * fixed_length > 0: a fixed-size response (FC5/6/15/16/22/8);
 * both < 0 (-1): variable (FC43, FC24...): the first CRC-valid length 4..256 wins. */
int gw_rtu_scan(const uint8_t *buf, size_t len, uint8_t unit, uint8_t fn, int byte_count, int fixed_length,
                gw_rtu_result *res) {
    res->bad_crc = 0;
    res->exception = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != unit) continue;
        if (i + 1 >= len) { res->keep_from = i; return GW_RTU_NEED_MORE; }
        uint8_t f = buf[i + 1];
        size_t need;
        if (f == (uint8_t)(fn | 0x80)) {
            need = 5;
        } else if (f != fn) {
            continue;
        } else if (fixed_length > 0) {
            need = (size_t)fixed_length;
        } else if (byte_count >= 0 || byte_count == -2) {
            if (i + 2 >= len) { res->keep_from = i; return GW_RTU_NEED_MORE; }
            if (byte_count >= 0 && buf[i + 2] != byte_count) continue;
            need = 5 + (size_t)buf[i + 2];
        } else {
            /* variable length: try every candidate end that is available */
            size_t maxn = len - i < 256 ? len - i : 256;
            for (size_t n = 4; n <= maxn; n++) {
                if (crc_ok(buf + i, n)) {
                    res->start = i; res->length = n; return GW_RTU_FOUND;
                }
            }
            if (len - i < 256) { res->keep_from = i; return GW_RTU_NEED_MORE; }
            res->bad_crc++;
            continue;
        }
        if (len - i < need) { res->keep_from = i; return GW_RTU_NEED_MORE; }
        if (crc_ok(buf + i, need)) {
            res->start = i;
            res->length = need;
            if (need == 5 && f == (uint8_t)(fn | 0x80)) res->exception = buf[i + 2];
            return GW_RTU_FOUND;
        }
        res->bad_crc++;
    }
    res->keep_from = len;
    return GW_RTU_NEED_MORE;
}
