#include "gatewayd_native.h"

static uint16_t t_modbus[256], t_x25[256];
static uint32_t t_32k[256];
static uint8_t t_hdr[256];
static int tables_ready;

static void init_tables(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t a = (uint16_t)i, b = (uint16_t)i;
        uint32_t c = (uint32_t)i;
        for (int k = 0; k < 8; k++) {
            a = (a & 1) ? (uint16_t)((a >> 1) ^ 0xA001) : (uint16_t)(a >> 1);   /* Modbus, reflected 0x8005 */
            b = (b & 1) ? (uint16_t)((b >> 1) ^ 0x8408) : (uint16_t)(b >> 1);   /* CCITT reflected (MS/TP data) */
            c = (c & 1) ? ((c >> 1) ^ 0xEB31D82Eu) : (c >> 1);                 /* CRC-32K (Koopman), reflected */
        }
        t_modbus[i] = a;
        t_x25[i] = b;
        t_32k[i] = c;
        /* MS/TP header CRC-8 (x^8 + x^7 + 1), the standard's bitwise step from crc 0 and data i */
        uint16_t crc = (uint16_t)i;
        crc = (uint16_t)(crc ^ (crc << 1) ^ (crc << 2) ^ (crc << 3) ^ (crc << 4) ^ (crc << 5) ^ (crc << 6) ^ (crc << 7));
        t_hdr[i] = (uint8_t)((crc & 0xfe) ^ ((crc >> 8) & 1));
    }
    tables_ready = 1;
}

#define READY() do { if (!tables_ready) init_tables(); } while (0)

uint16_t gw_crc16_modbus(const uint8_t *d, size_t n) {
    READY();
    uint16_t crc = 0xFFFF;
    for (size_t i = 0; i < n; i++) crc = (uint16_t)((crc >> 8) ^ t_modbus[(crc ^ d[i]) & 0xFF]);
    return crc;
}

uint8_t gw_mstp_header_crc(const uint8_t *d, size_t n) {
    READY();
    uint8_t crc = 0xFF;
    for (size_t i = 0; i < n; i++) crc = t_hdr[crc ^ d[i]];
    return (uint8_t)~crc;
}

uint16_t gw_mstp_data_crc(const uint8_t *d, size_t n) {
    READY();
    uint16_t crc = 0xFFFF;
    for (size_t i = 0; i < n; i++) crc = (uint16_t)((crc >> 8) ^ t_x25[(crc ^ d[i]) & 0xFF]);
    return (uint16_t)~crc;
}

uint32_t gw_crc32k(const uint8_t *d, size_t n) {
    READY();
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) crc = (crc >> 8) ^ t_32k[(crc ^ d[i]) & 0xFF];
    return ~crc;
}
