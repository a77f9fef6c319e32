/* gatewayd native core: pure functions, no I/O, no allocation.
 *
 * Byte-level hot paths: MS/TP (BACnet clause 9) framing and CRCs, Modbus RTU
 * response scanning, Modbus block planning, vectorized register decoding and
 * encoding. Every function touches only the memory it is given, within the
 * lengths given; state lives in caller-owned structs of fixed size.
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef GATEWAYD_NATIVE_H
#define GATEWAYD_NATIVE_H
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ CRCs */
uint16_t gw_crc16_modbus(const uint8_t *data, size_t len);   /* init 0xFFFF, reflected 0x8005; sent LSB first */
uint8_t gw_mstp_header_crc(const uint8_t *data, size_t len); /* clause 9 CRC-8, ones-complemented as sent */
uint16_t gw_mstp_data_crc(const uint8_t *data, size_t len);  /* clause 9 CRC-16, ones-complemented, LSB first */
uint32_t gw_crc32k(const uint8_t *data, size_t len);         /* CRC-32K (Koopman), ones-complemented, LSB first */

/* ------------------------------------------------------------------ MS/TP */
#define GW_MSTP_HEADER 8           /* preamble (2) + type, dest, src, length (2), header CRC */
#define GW_MSTP_MAX_DATA 501       /* data octets of a frame that is not COBS-encoded */
#define GW_MSTP_MAX_EXT_DATA 2032  /* largest client data of a COBS-encoded (extended) frame */
#define GW_MSTP_MAX_LENGTH 2043    /* largest Length field of an extended frame (encoded data + 5 - 2) */
#define GW_MSTP_MIN_EXT_LENGTH 5   /* smallest: one data octet, one code octet, encoded CRC-32K, minus 2 */

/* Encode one frame into out (needs GW_MSTP_HEADER + len + len/254 + 8 octets at most).
 * Returns the frame length, 0 if the frame cannot be encoded (see mstp.c) or out is too small. */
size_t gw_mstp_encode(uint8_t frame_type, uint8_t dest, uint8_t src, const uint8_t *data, size_t len,
                      uint8_t *out, size_t out_size);
/* COBS with every output octet XOR mask (clause 9 uses 0x55). 0 on error (out too small, or len 0). */
size_t gw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask);
/* Returns the decoded length, -1 on a malformed encoding or when out is too small.
 * Decoding in place (out == in) is safe: the output never overtakes the input. */
long gw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_size, uint8_t mask);

enum {
    GW_EV_NONE = 0,
    GW_EV_FRAME = 1,       /* a good frame: header fields and buf[0 .. data_len) */
    GW_EV_HEADER_CRC = 2,  /* header CRC-8 wrong: its octets are rescanned for a preamble */
    GW_EV_DATA_CRC = 3,    /* data CRC-16 / CRC-32K wrong */
    GW_EV_OVERSIZE = 4,    /* Length (or decoded data) larger than max_data / the frame type allows */
    GW_EV_TRUNCATED = 5,   /* frame cut short: silence, or a preamble inside extended-frame data */
    GW_EV_MALFORMED = 6    /* extended frame whose Length cannot hold a CRC-32K, or broken COBS */
};

typedef struct {
    uint8_t state;
    uint8_t frame_type, dest, src;  /* header of the current/last frame */
    uint8_t hdr_ok;                 /* those fields belong to the frame being received or just reported */
    uint8_t ext;                    /* that frame is COBS-encoded (types 32-127) */
    uint8_t hdr[6];                 /* type, dest, src, length hi, length lo, CRC-8 */
    uint8_t hdr_n;
    uint32_t need, have;            /* octets of the data field (incl. its CRC) expected / received */
    uint32_t max_data;              /* largest accepted (decoded) data length */
    uint32_t data_len;              /* data length of the last good frame */
    uint64_t frames, header_crc, data_crc, oversize, truncated, malformed, garbage;
    uint8_t buf[GW_MSTP_MAX_LENGTH + 2];
} gw_mstp_rx;

/* max_data is clamped to GW_MSTP_MAX_EXT_DATA. Counters start at zero. */
void gw_mstp_rx_init(gw_mstp_rx *rx, uint32_t max_data);
/* Consume input until one event happens or the input is exhausted; *consumed says how far it got.
 * After GW_EV_FRAME the frame is in the header fields and buf[0 .. data_len) until the next call. */
int gw_mstp_rx_feed(gw_mstp_rx *rx, const uint8_t *in, size_t len, size_t *consumed);
/* The line went quiet for T_frame_abort: a frame in progress is truncated (GW_EV_TRUNCATED). */
int gw_mstp_rx_silence(gw_mstp_rx *rx);

/* ------------------------------------------------------------------ Modbus RTU */
#define GW_RTU_BUF 520             /* an incomplete candidate (< 258 octets) and room for new input */
enum { GW_RTU_NEED_MORE = 0, GW_RTU_FOUND = 1 };
enum {
    GW_RTU_FIXED = 0,      /* whole response length known: `expect` (FC5/6/7/8/11/15/16/22) */
    GW_RTU_COUNT = 1,      /* byte-count response whose count must equal `expect` (reads) */
    GW_RTU_ANY_COUNT = 2,  /* byte-count response, count taken from the frame (FC1-4/12/17/20/21/23) */
    GW_RTU_FIFO = 3,       /* FC24: two-octet FIFO byte count */
    GW_RTU_DEVICE_ID = 4,  /* FC43 / MEI 14: length from the object list */
    GW_RTU_VARIABLE = 5    /* unknown layout: the shortest CRC-valid length 4..256 */
};

typedef struct {
    uint8_t unit, function, mode;
    uint8_t exception;             /* after FOUND: exception code, 0 for a normal response */
    uint16_t expect;               /* FIXED: frame length; COUNT: byte count */
    uint16_t len;                  /* octets buffered */
    uint16_t frame_len;            /* after FOUND: the frame is buf[0 .. frame_len) */
    uint16_t taken;                /* a reported frame still at the front of buf */
    uint64_t bad_crc, garbage;
    uint8_t buf[GW_RTU_BUF];
    uint8_t rejected[GW_RTU_BUF];  /* 1: a candidate at this position failed its CRC already */
} gw_rtu_rx;

void gw_rtu_rx_init(gw_rtu_rx *rx);
/* Expect the response to a new request: buffered octets are dropped (counted as garbage). */
void gw_rtu_rx_expect(gw_rtu_rx *rx, uint8_t unit, uint8_t function, uint8_t mode, uint16_t expect);
/* Consume input until a response is found or the input is exhausted (*consumed says how far). */
int gw_rtu_rx_feed(gw_rtu_rx *rx, const uint8_t *in, size_t len, size_t *consumed);

/* ------------------------------------------------------------------ block planner */
typedef struct { uint8_t table; uint8_t unit; uint16_t pad; uint32_t start; uint32_t end; } gw_range; /* end incl. */
typedef struct { uint64_t key; uint32_t idx; uint32_t pad; } gw_sort_item;
enum { GW_PLAN_OK = 0, GW_PLAN_TOO_WIDE = 1, GW_PLAN_FORBIDDEN = 2, GW_PLAN_ZERO_WIDTH = 3, GW_PLAN_ADDRESS = 4,
       GW_PLAN_TABLE = 5, GW_PLAN_UNIT = 6 };
/* Plan one device's points. points: n quads (table 0-3, unit, address, width). Scratch: order (2 n items);
 * forbidden (nf ranges, end inclusive) is sorted and merged in place. Outputs: blocks, quads (table, unit,
 * start, count), room for n; members, pairs (point index, offset in its block) in block and address order,
 * block b owning pairs block_first[b] .. block_first[b + 1] (room for n + 1); error[i] per point (GW_PLAN_*).
 * Returns the block count. Time: O(n + f log f + n log f) (radix sort); deterministic. */
size_t gw_plan(const uint32_t *points, size_t n, uint32_t max_gap, uint32_t max_regs, uint32_t max_bits,
               gw_range *forbidden, size_t nf, gw_sort_item *order, uint32_t *blocks, uint32_t *block_first,
               uint32_t *members, uint8_t *error);

/* ------------------------------------------------------------------ register codec */
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
    uint32_t pad2;
} gw_spec;
enum { GW_K_FLOAT = 0, GW_K_INT = 1, GW_K_BIGINT = 2, GW_K_BOOL = 3, GW_K_STRING = 4, GW_K_MISSING = 5,
       GW_K_UINT64 = 6 };
/* Decode n points of one block. values[i] numeric value; ivalues[i] the exact integer for GW_K_INT
 * and the bit pattern for GW_K_UINT64 (GW_K_BIGINT is not produced any more); kinds[i] says which. Strings: ivalues[i] = byte offset,
 * values[i] = byte length (NULs trimmed) of the text written to strbuf (room for len octets).
 * A point whose registers lie beyond len is GW_K_MISSING. Returns the number of points decoded. */
size_t gw_decode(const gw_spec *specs, size_t n, const uint8_t *payload, size_t len, int bits,
                 double *values, int64_t *ivalues, uint8_t *kinds, uint8_t *strbuf);
/* Encode one numeric value into registers (wire order). use_int: 0 value is the double; 1 ivalue is exact;
 * 2 ivalue is the bit pattern of a uint64 above INT64_MAX. Returns the register count, or
 * -1 out of range, -2 not finite (NaN/inf) for an integer type, -3 type not encodable. */
int gw_encode(const gw_spec *spec, double value, int64_t ivalue, int use_int, uint16_t *regs, size_t max_regs);
#endif
