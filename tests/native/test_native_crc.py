"""CRCs: differentials against crcmod and the bitwise reference (the published examples are pinned in
test_native_standard_vectors.py), residues, buffer types."""

import crcmod
from native_support import budget
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from gatewayd.native import crc

modbus_mod = crcmod.predefined.mkCrcFun("modbus")
x25_mod = crcmod.predefined.mkCrcFun("x-25")                                       # MS/TP data CRC
crc32k_mod = crcmod.mkCrcFun(0x1741B8CD7, rev=True, initCrc=0, xorOut=0xFFFFFFFF)  # Koopman, reflected
header_mod = crcmod.mkCrcFun(0x181, rev=True, initCrc=0, xorOut=0xFF)              # x^8 + x^7 + 1, reflected


def test_crc32k_residue():
    """Annex G.3: CRC-32K over data followed by its (complemented, LSB first) CRC leaves 0x0843323B."""
    for data in (b"", b"\x00", b"BACnet", bytes(range(256)) * 3):
        c = crc.crc32k(data)
        reg = 0xFFFFFFFF
        for b in data + c.to_bytes(4, "little"):
            reg = ref.crc32k_step(b, reg)
        assert reg == 0x0843323B


@settings(max_examples=budget(3000), deadline=None)
@given(st.binary(max_size=700))
def test_crcs_match_crcmod_and_the_bitwise_reference(data):
    assert crc.crc16_modbus(data) == modbus_mod(data) == ref.crc16_modbus(data)
    assert crc.mstp_data_crc(data) == x25_mod(data) == ref.mstp_data_crc(data)
    assert crc.crc32k(data) == crc32k_mod(data) == ref.crc32k(data)
    assert crc.mstp_header_crc(data) == header_mod(data) == ref.mstp_header_crc(data)


def test_any_buffer_type():
    data = bytes(range(100))
    for view in (bytearray(data), memoryview(data)):
        assert crc.crc16_modbus(view) == crc.crc16_modbus(data)
        assert crc.crc32k(view) == crc.crc32k(data)
