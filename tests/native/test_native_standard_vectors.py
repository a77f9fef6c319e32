"""Known answers published with the standards (BACnet 135 clause 9 / Annex G, Modbus over serial line).

Only worked examples and check values are pinned here; the differential and property tests live in
the other test modules.
"""

import struct

from gatewayd.native import crc, mstp, rtu


def header_register(data: bytes, crc8: int = 0xFF) -> int:
    """Annex G.1 CalcHeaderCRC, register value (no final complement), written from the standard's text."""
    for b in data:
        c = crc8 ^ b
        c = c ^ (c << 1) ^ (c << 2) ^ (c << 3) ^ (c << 4) ^ (c << 5) ^ (c << 6) ^ (c << 7)
        crc8 = ((c & 0xFE) ^ ((c >> 8) & 1)) & 0xFF
    return crc8


def data_register(data: bytes, crc16: int = 0xFFFF) -> int:
    """Annex G.2 CalcDataCRC, register value (no final complement)."""
    for b in data:
        crc16 ^= b
        for _ in range(8):
            crc16 = (crc16 >> 1) ^ 0x8408 if crc16 & 1 else crc16 >> 1
    return crc16


def crc32k_register(data: bytes, c: int = 0xFFFFFFFF) -> int:
    """Annex G.3 CalcCRC32K, register value (no final complement)."""
    for b in data:
        for _ in range(8):
            c = (c >> 1) ^ 0xEB31D82E if (b ^ c) & 1 else c >> 1
            b >>= 1
    return c


def test_annex_g1_header_crc_token_frame():
    # Token frame from node 0x05 to node 0x10: register 0x73 after the five header octets, 0x8C sent
    header = bytes([0x00, 0x10, 0x05, 0x00, 0x00])
    assert header_register(header) == 0x73
    assert crc.mstp_header_crc(header) == 0x8C
    # the receiver runs the CRC over the header and its CRC octet and must see the residue 0x55
    assert header_register(header + b"\x8c") == 0x55
    assert mstp.encode_frame(0, 0x10, 0x05) == bytes.fromhex("55ff00100500008c")


def test_annex_g2_data_crc():
    # data 01 22 30: register 0x1E0E, 0xEB70, 0x42EF after each octet; 0xBD10 sent as 10 BD
    assert [data_register(b"\x01"), data_register(b"\x01\x22"), data_register(b"\x01\x22\x30")] == \
        [0x1E0E, 0xEB70, 0x42EF]
    assert crc.mstp_data_crc(b"\x01\x22\x30") == 0xBD10
    assert data_register(b"\x01\x22\x30\x10\xbd") == 0xF0B8           # the receiver's good-CRC residue
    frame = mstp.encode_frame(6, 0x0A, 0x14, b"\x01\x22\x30")
    assert frame[-2:] == b"\x10\xbd" and len(frame) == 8 + 3 + 2


def test_clause_9_cobs_example_hello_world():
    # The worked example for COBS-encoded frames: the client data "Hello World\n" plus its NUL is COBS-encoded,
    # every octet XOR 0x55, and the Length field is the encoded data (14) + the encoded CRC-32K (5) - 2 = 17.
    data = b"Hello World\n\x00"
    encoded = bytes.fromhex("581d3039393a75023a2739315f54")
    frame = mstp.encode_frame(32, 0x10, 0x05, data)
    assert frame[5:7] == struct.pack(">H", 17)
    assert frame[8:8 + 14] == encoded and len(frame) == 8 + 14 + 5
    assert frame[7] == crc.mstp_header_crc(frame[2:7])
    # the Encoded CRC-32K field decodes to the CRC-32K of the Encoded Data field, LSB first; running the
    # CRC over the encoded data and those four octets leaves the residue 0x0843323B (Annex G.3)
    # the Encoded CRC-32K octets as the standard's cobs_frame_encode routine produces them (checked against a
    # transcription of that routine: CRC over the transmitted Encoded Data, complemented, LSB first, COBS + 0x55)
    assert frame[-5:] == bytes.fromhex("50088fbb58")
    enc_crc = bytes(b ^ 0x55 for b in frame[-5:])
    assert enc_crc[0] == 5 and 0 not in enc_crc[1:]                  # no zero octet in this CRC value
    assert enc_crc[1:] == crc.crc32k(encoded).to_bytes(4, "little")
    assert crc32k_register(encoded + enc_crc[1:]) == 0x0843323B
    assert crc.crc32k(encoded) == crc32k_register(encoded) ^ 0xFFFFFFFF
    assert mstp.MstpReceiver().feed(frame) == [mstp.Frame(32, 0x10, 0x05, data)]


def test_crc_check_values():
    # "123456789" check values from the CRC catalogues
    assert crc.crc16_modbus(b"123456789") == 0x4B37                     # CRC-16/MODBUS
    assert crc.mstp_data_crc(b"123456789") == 0x906E                    # CRC-16/IBM-SDLC
    assert crc.crc32k(b"") == 0


def test_modbus_serial_line_examples():
    # Read holding registers, slave 1, address 0, 10 registers: CRC C5 CD (low octet first)
    assert rtu.frame(1, bytes.fromhex("030000000a")) == bytes.fromhex("01030000000ac5cd")
    # an exception response (illegal data address) as a device sends it
    exc = rtu.frame(1, bytes([0x83, 0x02]))
    assert exc == bytes.fromhex("018302c0f1")
    sc = rtu.RtuResponseScanner(1, 3, byte_count=20)
    r = sc.feed(exc)
    assert r is not None and r.exception_code == 2
