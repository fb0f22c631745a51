"""Sans-I/O codec for PN532 host-link frames (normal information frames, ACK, NACK, error)."""

from __future__ import annotations

from edgepoint.errors import ProtocolError

HOST_TO_PN532 = 0xD4
PN532_TO_HOST = 0xD5

START_CODE = b"\x00\xff"
ACK = b"\x00\x00\xff\x00\xff\x00"
NACK = b"\x00\x00\xff\xff\x00\x00"
# UM0701-02 6.2.1.5: a valid frame whose content the firmware rejects is answered
# with this one-byte "syntax error" frame; it carries no TFI.
SYNTAX_ERROR_TFI = 0x7F

# LEN is one byte and must cover TFI; longer payloads need extended frames,
# which the adafruit driver never sends and this codec does not speak.
MAX_PAYLOAD = 0xFE


class FrameError(ProtocolError):
    """A PN532 frame is malformed: bad preamble, length checksum, data checksum or postamble."""


def encode_frame(tfi_and_data: bytes) -> bytes:
    """Wrap TFI plus data into a normal information frame with preamble and postamble."""
    length = len(tfi_and_data)
    if not 1 <= length <= MAX_PAYLOAD:
        raise ValueError(f"frame payload must be 1..{MAX_PAYLOAD} bytes, got {length}")
    lcs = -length & 0xFF
    dcs = -sum(tfi_and_data) & 0xFF
    return b"\x00" + START_CODE + bytes((length, lcs)) + tfi_and_data + bytes((dcs, 0x00))


def decode_frame(raw: bytes | bytearray | memoryview) -> bytes:
    """Return TFI plus data of the normal information frame in `raw`.

    Any number of 0x00 bytes may precede the start code (the preamble is one, the
    I2C link may pad), and zero padding may follow the postamble because a host
    reads a fixed count of bytes; anything else is a FrameError.
    """
    data = bytes(raw)
    start = data.find(START_CODE)
    if start < 0 or any(data[:start]):
        raise FrameError(f"no 00 FF start code after zero preamble in {data[:8].hex(' ')}")
    pos = start + len(START_CODE)
    if len(data) < pos + 2:
        raise FrameError("frame truncated before LEN/LCS")
    length, lcs = data[pos], data[pos + 1]
    if (length, lcs) == (0x00, 0xFF):
        raise FrameError("ACK frame where an information frame was expected")
    if (length, lcs) == (0xFF, 0x00):
        raise FrameError("NACK frame where an information frame was expected")
    if (length, lcs) == (0xFF, 0xFF):
        raise FrameError("extended information frames are not supported")
    if (length + lcs) & 0xFF:
        raise FrameError(f"length checksum mismatch: LEN={length:#04x} LCS={lcs:#04x}")
    body_start = pos + 2
    body_end = body_start + length
    if len(data) < body_end + 2:
        raise FrameError(f"frame truncated: LEN={length} but only {len(data)} bytes in all")
    body = data[body_start:body_end]
    dcs = data[body_end]
    if (sum(body) + dcs) & 0xFF:
        raise FrameError(f"data checksum mismatch: DCS={dcs:#04x}")
    if any(data[body_end + 1 :]):
        raise FrameError("missing postamble or trailing garbage after the frame")
    return body
