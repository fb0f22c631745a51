"""PN532 frame codec: known vectors, round trips and every kind of corruption."""

from __future__ import annotations

import pytest

from edgepoint.drivers.rfid.frames import ACK, NACK, FrameError, decode_frame, encode_frame
from edgepoint.errors import ProtocolError

GET_FIRMWARE_VERSION = bytes.fromhex("00 00 ff 02 fe d4 02 2a 00")
FIRMWARE_RESPONSE = bytes.fromhex("00 00 ff 06 fa d5 03 32 01 06 07 e8 00")


def test_encode_matches_the_user_manual_vectors() -> None:
    assert encode_frame(b"\xd4\x02") == GET_FIRMWARE_VERSION
    assert encode_frame(bytes.fromhex("d5 03 32 01 06 07")) == FIRMWARE_RESPONSE
    assert encode_frame(b"\x7f") == bytes.fromhex("00 00 ff 01 ff 7f 81 00")


@pytest.mark.parametrize("size", [1, 2, 9, 128, 254])
def test_round_trip(size: int) -> None:
    payload = bytes((0xD4, *((i * 37) & 0xFF for i in range(size - 1))))
    assert decode_frame(encode_frame(payload)) == payload


@pytest.mark.parametrize("size", [0, 255])
def test_encode_rejects_payloads_a_normal_frame_cannot_hold(size: int) -> None:
    with pytest.raises(ValueError):
        encode_frame(bytes(size))


def test_decode_accepts_extra_preamble_and_zero_padding_after_the_postamble() -> None:
    assert decode_frame(b"\x00\x00" + FIRMWARE_RESPONSE + bytes(20)) == bytes.fromhex(
        "d5 03 32 01 06 07"
    )
    assert decode_frame(bytearray(FIRMWARE_RESPONSE[1:])) == bytes.fromhex("d5 03 32 01 06 07")


def _with(frame: bytes, index: int, value: int) -> bytes:
    return frame[:index] + bytes((value,)) + frame[index + 1 :]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_with(FIRMWARE_RESPONSE, 4, 0xFB), "length checksum"),
        (_with(FIRMWARE_RESPONSE, 11, 0xE9), "data checksum"),
        (_with(FIRMWARE_RESPONSE, 7, 0x33), "data checksum"),
        (b"\x01" + FIRMWARE_RESPONSE, "start code"),
        (FIRMWARE_RESPONSE.replace(b"\x00\xff", b"\x00\xfe", 1), "start code"),
        (b"", "start code"),
        (FIRMWARE_RESPONSE[:4], "truncated"),
        (FIRMWARE_RESPONSE[:9], "truncated"),
        (FIRMWARE_RESPONSE[:-1], "truncated"),
        (_with(FIRMWARE_RESPONSE, 12, 0x55), "postamble"),
        (FIRMWARE_RESPONSE + b"\x00\x42", "trailing garbage"),
        (ACK, "ACK"),
        (NACK, "NACK"),
        (bytes.fromhex("00 00 ff ff ff 00 02 fe d4 02 2a 00"), "extended"),
    ],
)
def test_decode_names_each_corruption(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(raw)


def test_frame_error_belongs_to_the_error_root() -> None:
    assert issubclass(FrameError, ProtocolError)
