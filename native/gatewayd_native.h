/* gatewayd native core: pure functions, no I/O, no allocation.
 * Byte-level hot paths: MS/TP (BACnet clause 9) framing and CRCs, Modbus RTU
 * framing, Modbus block planning, vectorized register decoding/encoding.
 * Every function only touches the memory it is given, within the lengths given. */
#ifndef GATEWAYD_NATIVE_H
#define GATEWAYD_NATIVE_H
#include <stddef.h>
#include <stdint.h>

/* ---- CRCs */
uint16_t gw_crc16_modbus(const uint8_t *data, size_t len);
uint8_t gw_mstp_header_crc(const uint8_t *data, size_t len);   /* ones-complement as transmitted */
uint16_t gw_mstp_data_crc(const uint8_t *data, size_t len);    /* ones-complement, sent LSB first */
uint32_t gw_crc32k(const uint8_t *data, size_t len);           /* ones-complement, sent LSB first */

/* ---- MS/TP */
#define GW_MSTP_HEADER 8
#define GW_MSTP_MAX_EXT 2043
size_t gw_mstp_encode(uint8_t frame_type, uint8_t dest, uint8_t src, const uint8_t *data, size_t len,
                      uint8_t *out, size_t out_size);        /* 0 if out too small or data too long */
size_t gw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask);
size_t gw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask, int *ok);

enum { GW_EV_NONE = 0, GW_EV_FRAME = 1, GW_EV_HEADER_CRC = 2, GW_EV_DATA_CRC = 3, GW_EV_OVERSIZE = 4,
       GW_EV_TRUNCATED = 5 };

typedef struct {
    int state;
    uint8_t hdr[6];
    int hdr_n;
    uint8_t pending[6];       /* header bytes to rescan after a bad header CRC */
    int pending_n, pending_i;
    size_t need, have;        /* data bytes expected / received (incl. CRC) */
    size_t max_data;          /* largest accepted decoded data length */
    uint8_t frame_type, dest, src;
    size_t data_len;          /* decoded data length of the last frame */
    uint64_t frames, header_crc, data_crc, oversize, truncated, garbage;
    uint8_t buf[2 * GW_MSTP_MAX_EXT + 16];   /* raw data field + room to decode */
} gw_mstp_rx;

void gw_mstp_rx_init(gw_mstp_rx *rx, size_t max_data);
/* Consume input until one event happens or the input is exhausted. *consumed says how far it got.
 * On GW_EV_FRAME the header fields and rx->buf[0..data_len) hold the frame (valid until the next call). */
int gw_mstp_rx_feed(gw_mstp_rx *rx, const uint8_t *in, size_t len, size_t *consumed);
/* The line went silent (T_frame_abort): a frame in progress is truncated. */
int gw_mstp_rx_silence(gw_mstp_rx *rx);

/* ---- Modbus RTU response scanner (stateless) */
enum { GW_RTU_NEED_MORE = 0, GW_RTU_FOUND = 1 };
typedef struct {
    size_t start, length;     /* frame position in the buffer (incl. unit and CRC) */
    int exception;            /* exception code or 0 */
    size_t keep_from;         /* NEED_MORE: bytes before this are garbage */
    uint32_t bad_crc;         /* candidates rejected by their CRC */
} gw_rtu_result;
int gw_rtu_scan(const uint8_t *buf, size_t len, uint8_t unit, uint8_t function, int byte_count, int fixed_length,
                gw_rtu_result *res);

/* ---- Block planner */
typedef struct { uint8_t table; uint8_t unit; uint16_t pad; uint32_t address; uint32_t width; } gw_plan_point;
typedef struct { uint8_t table; uint8_t unit; uint16_t pad; uint32_t start; uint32_t end; } gw_range; /* end inclusive */
typedef struct { uint8_t table; uint8_t unit; uint16_t pad; uint32_t start; uint32_t count; } gw_block;
typedef struct { uint64_t key; uint32_t width; uint32_t idx; } gw_sort_item;
enum { GW_PLAN_OK = 0, GW_PLAN_TOO_WIDE = 1, GW_PLAN_FORBIDDEN = 2, GW_PLAN_ZERO_WIDTH = 3 };
/* Inputs as parallel arrays. order: scratch of n items. Outputs: blocks (room for n); the planned points
 * in block order as member_idx/member_off (count = return of *n_members), block b owning
 * member_idx[block_first[b] .. block_first[b+1]); error[i] per input point. Returns the block count.
 * Refused ranges are checked linearly (O(n * nf)); devices refuse few ranges. */
size_t gw_plan(const uint8_t *tables, const uint8_t *units, const uint32_t *addresses, const uint32_t *widths,
               size_t n, uint32_t max_gap, uint32_t max_regs, uint32_t max_bits,
               const gw_range *forbidden, size_t nf, gw_sort_item *order, gw_block *blocks,
               uint32_t *block_first, uint32_t *member_idx, uint32_t *member_off, size_t *n_members,
               uint8_t *error);

/* ---- Register codec */
enum { GW_T_BOOL = 0, GW_T_INT16, GW_T_UINT16, GW_T_INT32, GW_T_UINT32, GW_T_INT64, GW_T_UINT64, GW_T_FLOAT32,
       GW_T_FLOAT64, GW_T_STRING };
enum { GW_O_ABCD = 0, GW_O_CDAB = 1, GW_O_BADC = 2, GW_O_DCBA = 3 };
typedef struct {
    uint32_t offset;          /* register (or bit) offset in the block */
    uint8_t type, order;
    int8_t bit_offset;        /* -1: none */
    uint8_t pad;
    uint64_t bit_mask;        /* 0: none */
    double scale, add;
    uint32_t length;          /* registers, for strings */
} gw_spec;
enum { GW_K_FLOAT = 0, GW_K_INT = 1, GW_K_BIGINT = 2, GW_K_BOOL = 3, GW_K_STRING = 4, GW_K_MISSING = 5, GW_K_UINT64 = 6 };
/* Decode n points. values[i] numeric value; ivalues[i] exact integer for GW_K_BIGINT; kinds[i] says which.
 * Strings: kinds GW_K_STRING, ivalues[i] = byte offset in payload, values[i] = byte length (already swapped
 * bytes are written to strbuf at the same offset when the order swaps bytes). Returns points decoded ok. */
size_t gw_decode(const gw_spec *specs, size_t n, const uint8_t *payload, size_t len, int bits,
                 double *values, int64_t *ivalues, uint8_t *kinds, uint8_t *strbuf);
/* Encode one value into registers; returns the register count, or -1 out of range, -2 not finite, -3 bad type. */
int gw_encode(const gw_spec *spec, double value, int64_t ivalue, int use_int, uint16_t *regs, size_t max_regs);
#endif
