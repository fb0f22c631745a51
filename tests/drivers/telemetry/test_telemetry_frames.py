"""Tests for the sans-I/O telemetry codec: every way a line can be good or bad."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.frames import (
    MAX_CHANNEL,
    MAX_FRAME_LEN,
    SEQ_MAX,
    Ack,
    TelemetryParser,
    TelemetryStats,
    crc16_ccitt_false,
    encode_ack,
    encode_frame,
    next_seq,
)


def sample(seq: int = 1, energy_wh: int = 1000, **kw: object) -> TelemetrySample:
    values: dict[str, object] = {
        "power_w": 7360.0,
        "current_a": 32.0,
        "voltage_v": 230.0,
        "temperature_c": 31.5,
        "extra": (),
    }
    values.update(kw)
    return TelemetrySample(seq=seq, energy_wh=energy_wh, **values)  # type: ignore[arg-type]


def frame_with_payload(payload: bytes) -> bytes:
    return b"$" + payload + b"*" + f"{crc16_ccitt_false(payload):04X}".encode() + b"\r\n"


def test_crc_matches_the_catalogue_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


PROTOCOL_MD = Path(__file__).resolve().parents[3] / "hardware" / "PROTOCOL.md"
EXAMPLES = (
    b"$1,0,123456,0.0,0.00,229.6,24.8,fw=1.4.2,boot=por*199D\r\n",
    b"$1,1,123456,0.0,0.00,230.1,24.9*A0AD\r\n",
    b"$1,2,123458,7360.0,32.00,230.0,31.5*5F1D\r\n",
    b"$1,65535,130871,7358.2,31.99,230.0,33.0*FFFA\r\n",
    b"$1,1,130873,7361.4,32.01,230.0,33.1,err=E12*2E67\r\n",
)


def test_protocol_md_examples_are_the_ones_tested() -> None:
    document = PROTOCOL_MD.read_text(encoding="utf-8")
    for line in EXAMPLES:
        assert line.decode().rstrip() in document


def test_protocol_md_examples_parse() -> None:
    parser = TelemetryParser()
    got = parser.feed(b"".join(EXAMPLES))
    assert [s.seq for s in got] == [0, 1, 2, 65535, 1]
    assert got[0].extra == (("fw", "1.4.2"), ("boot", "por"))
    assert got[2] == sample(seq=2, energy_wh=123458)
    # 2 -> 65535 skips 65532 frames, more than half the ring: read as a reset.
    assert parser.stats == TelemetryStats(
        frames_ok=5, seq_resets=1, bytes=sum(len(line) for line in EXAMPLES)
    )
    bad = EXAMPLES[2].replace(b"*5F1D", b"*5F10")
    assert bad.decode().rstrip() in PROTOCOL_MD.read_text(encoding="utf-8")
    assert parser.feed(bad) == []
    assert parser.stats.bad_checksum == 1


CHANNEL_EXAMPLES = (
    b"$1,40,123460,7360.0,32.00,230.0,31.5*2E8F\r\n",
    b"$1,41,88012,3680.0,16.00,229.8,30.9,ch=2*560C\r\n",
    b"$1,42,123462,7360.0,32.00,230.0,31.6,ch=1*CC43\r\n",
    b"$1,44,123464,7360.0,32.00,230.0,31.6*6D24\r\n",
    b"$1,45,88014,3680.0,16.00,229.9,31.0,err=E12,ch=2*8670\r\n",
)
BAD_CHANNEL_EXAMPLE = b"$1,46,123466,7360.0,32.00,230.0,31.7,ch=9*CDD8\r\n"


def test_protocol_md_channel_examples_parse_as_documented() -> None:
    document = PROTOCOL_MD.read_text(encoding="utf-8")
    for line in (*CHANNEL_EXAMPLES, BAD_CHANNEL_EXAMPLE):
        assert line.decode().rstrip() in document
    parser = TelemetryParser()
    got = parser.feed(b"".join(CHANNEL_EXAMPLES))
    assert [(s.seq, s.channel) for s in got] == [(40, 1), (41, 2), (42, 1), (44, 1), (45, 2)]
    assert [s.energy_wh for s in got if s.channel == 2] == [88012, 88014]
    assert got[2].extra == ()  # ch=1 is taken out like any other channel
    assert got[4].extra == (("err", "E12"),)
    assert parser.stats.seq_gaps == 1 and parser.stats.seq_resets == 0
    assert parser.feed(BAD_CHANNEL_EXAMPLE) == []
    assert parser.stats.malformed == 1


def test_channel_one_is_implicit_on_the_wire() -> None:
    # Single-meter frames stay byte-identical to those of firmware without channels.
    assert b"ch=" not in encode_frame(sample(channel=1))
    assert encode_frame(sample(channel=1)) == encode_frame(sample())
    assert b",ch=3" in encode_frame(sample(channel=3, extra=(("fw", "2"),)))


@pytest.mark.parametrize("channel", range(1, MAX_CHANNEL + 1))
def test_every_channel_round_trips(channel: int) -> None:
    original = sample(channel=channel, extra=(("fw", "1.5.0"),))
    assert TelemetryParser().feed(encode_frame(original)) == [original]


@pytest.mark.parametrize(
    "extras",
    [
        b"ch=0",
        b"ch=9",
        b"ch=01",
        b"ch=+2",
        b"ch= 2",
        b"ch=",
        b"ch=x",
        b"ch=2,ch=2",  # repeated, even with the same value
        b"ch=1,fw=2,ch=3",
    ],
)
def test_bad_channel_makes_the_frame_malformed(extras: bytes) -> None:
    parser = TelemetryParser()
    payload = b"1,5,100,0.0,0.00,230.0,20.0," + extras
    got = parser.feed(frame_with_payload(payload) + encode_frame(sample(seq=6, channel=2)))
    assert [(s.seq, s.channel) for s in got] == [(6, 2)]
    assert parser.stats.malformed == 1
    assert parser.stats.frames_ok == 1


def test_only_the_lower_case_key_names_a_channel() -> None:
    payload = b"1,5,100,0.0,0.00,230.0,20.0,CH=2,chan=3"
    (got,) = TelemetryParser().feed(frame_with_payload(payload))
    assert got.channel == 1
    assert got.extra == (("CH", "2"), ("chan", "3"))


def test_encoder_refuses_bad_channels_and_a_ch_extra() -> None:
    for bad in (
        sample(channel=0),
        sample(channel=MAX_CHANNEL + 1),
        sample(extra=(("ch", "2"),)),  # would make the channel ambiguous
    ):
        with pytest.raises(ValueError):
            encode_frame(bad)


def feed_channels(parser: TelemetryParser, frames: list[tuple[int, int]]) -> list[tuple[int, int]]:
    stream = b"".join(encode_frame(sample(seq=seq, channel=ch)) for seq, ch in frames)
    return [(s.seq, s.channel) for s in parser.feed(stream)]


def test_interleaved_channels_share_one_sequence_counter() -> None:
    parser = TelemetryParser()
    frames = [(n, 1 + (n - 1) % 3) for n in range(1, 31)]  # three meters, round-robin
    assert feed_channels(parser, frames) == frames
    assert parser.stats.seq_gaps == 0 and parser.stats.seq_resets == 0


def test_a_lost_frame_of_any_channel_is_one_gap() -> None:
    parser = TelemetryParser()
    # 3 (channel 1) and 6, 7 (channels 2 and 1) are missing.
    feed_channels(parser, [(1, 1), (2, 2), (4, 2), (5, 1), (8, 2), (9, 1)])
    assert parser.stats.seq_gaps == 3
    assert parser.stats.seq_resets == 0


def test_a_reboot_with_several_channels_is_one_reset() -> None:
    parser = TelemetryParser()
    feed_channels(parser, [(SEQ_MAX - 1, 1), (SEQ_MAX, 2), (1, 1), (2, 2), (0, 1), (1, 2), (2, 1)])
    assert parser.stats.seq_resets == 1
    assert parser.stats.seq_gaps == 0


def test_good_frame_parses_to_the_same_sample() -> None:
    original = sample(extra=(("fw", "1.4.2"), ("rssi", "-61")))
    parser = TelemetryParser()
    assert parser.feed(encode_frame(original)) == [original]
    assert parser.stats == TelemetryStats(frames_ok=1, bytes=len(encode_frame(original)))


def test_bad_checksum_is_counted_and_dropped() -> None:
    good = encode_frame(sample(seq=1))
    bad = good.replace(b"7360.0", b"7361.0")
    parser = TelemetryParser()
    assert parser.feed(bad + encode_frame(sample(seq=2))) == [sample(seq=2)]
    assert parser.stats.bad_checksum == 1
    assert parser.stats.frames_ok == 1


def test_lowercase_checksum_is_accepted() -> None:
    frame = encode_frame(sample())
    star = frame.index(b"*")
    lowered = frame[:star] + frame[star:].lower()
    assert TelemetryParser().feed(lowered) == [sample()]


@pytest.mark.parametrize(
    ("noise", "runs"),
    [
        (b"garbage\r\n", 1),
        (b"\x00\xff\xfe\r\n", 1),
        (b"ets Jun  8 2016 00:22:57\r\nrst:0x1\r\n", 2),  # ESP32 boot ROM chatter
        (b"noCRLF", 1),
    ],
)
def test_garbage_between_frames_is_counted_and_skipped(noise: bytes, runs: int) -> None:
    parser = TelemetryParser()
    got = parser.feed(encode_frame(sample(seq=1)) + noise + encode_frame(sample(seq=2)))
    assert [s.seq for s in got] == [1, 2]
    assert parser.stats.garbage == runs
    assert parser.stats.seq_gaps == 0


def test_garbage_run_split_across_feeds_counts_once() -> None:
    parser = TelemetryParser()
    parser.feed(b"abc")
    parser.feed(b"def\r\n")
    parser.feed(b"\r\n\n")
    assert parser.stats.garbage == 1


def test_frame_without_checksum_or_terminator_structure_is_garbage() -> None:
    parser = TelemetryParser()
    parser.feed(b"$1,2,3\r\n$\r\n$1,2,3*12\r\n$1,2,3*XYZW\r\n")
    assert parser.stats.garbage == 4
    assert parser.stats.frames_ok == 0


def test_frame_cut_by_a_new_start_marker_loses_only_itself() -> None:
    first = encode_frame(sample(seq=1))
    second = encode_frame(sample(seq=2))
    parser = TelemetryParser()
    assert parser.feed(first[:20] + second) == [sample(seq=2)]
    assert parser.stats.garbage == 1


def test_partial_lines_split_at_every_offset() -> None:
    stream = (
        encode_frame(sample(seq=1, extra=(("fw", "2"),)))
        + b"noise\r\n"
        + encode_frame(sample(seq=2))
        + encode_frame(sample(seq=3))
    )
    expected = TelemetryParser().feed(stream)
    assert len(expected) == 3
    for cut in range(len(stream) + 1):
        parser = TelemetryParser()
        got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert got == expected, cut
        assert parser.stats.garbage == 1, cut
        assert parser.stats.bytes == len(stream)


def test_byte_by_byte_feed() -> None:
    stream = b"".join(encode_frame(sample(seq=n)) for n in range(1, 6))
    parser = TelemetryParser()
    got = [s for i in range(len(stream)) for s in parser.feed(stream[i : i + 1])]
    assert [s.seq for s in got] == [1, 2, 3, 4, 5]


def test_several_frames_in_one_chunk() -> None:
    stream = b"".join(encode_frame(sample(seq=n, energy_wh=n)) for n in range(1, 51))
    parser = TelemetryParser()
    got = parser.feed(stream)
    assert [s.energy_wh for s in got] == list(range(1, 51))
    assert parser.stats.frames_ok == 50


@pytest.mark.parametrize("terminator", [b"\r\n", b"\n", b"\r", b"\n\r", b"\r\r\n"])
def test_line_ending_variants(terminator: bytes) -> None:
    one = encode_frame(sample(seq=1))[:-2] + terminator
    two = encode_frame(sample(seq=2))[:-2] + terminator
    parser = TelemetryParser()
    assert [s.seq for s in parser.feed(one + two)] == [1, 2]
    assert parser.stats.garbage == 0


def test_overlong_line_is_dropped_with_bounded_memory_and_recovers() -> None:
    parser = TelemetryParser()
    parser.feed(b"$1,1," + b"9" * 10_000)
    # Still the same line: nothing buffered beyond the frame limit.
    assert len(parser._frame) <= MAX_FRAME_LEN
    parser.feed(b"9" * 100_000)
    assert len(parser._frame) <= MAX_FRAME_LEN
    got = parser.feed(b"\r\n" + encode_frame(sample(seq=7)))
    assert got == [sample(seq=7)]
    assert parser.stats.overlong == 1
    assert parser.stats.garbage == 0


def test_overlong_line_resyncs_on_the_next_start_marker() -> None:
    parser = TelemetryParser()
    # A lost terminator glues frames together; the next "$" still starts a frame.
    got = parser.feed(b"$" + b"x" * 300 + encode_frame(sample(seq=3)))
    assert got == [sample(seq=3)]
    assert parser.stats.overlong == 1


def test_frame_of_exactly_the_maximum_length_is_accepted() -> None:
    room = MAX_FRAME_LEN - (len(encode_frame(sample())) - 2)
    # Each extra costs ",p=" plus its value (at most 64 characters).
    pieces = -(-room // 67)
    sizes = [room // pieces + (1 if i < room % pieces else 0) for i in range(pieces)]
    extra = tuple(("p", "x" * (size - 3)) for size in sizes)
    frame = encode_frame(sample(extra=extra))
    assert len(frame) - 2 == MAX_FRAME_LEN
    assert TelemetryParser().feed(frame) == [sample(extra=extra)]


def test_one_byte_over_the_limit_is_overlong() -> None:
    payload = b"1,1,1,1.0,1.00,1.0,1.0,k="
    payload += b"v" * (MAX_FRAME_LEN - len(payload) - 6)  # "$" + "*XXXX" = 6
    exact = frame_with_payload(payload)
    assert len(exact) - 2 == MAX_FRAME_LEN
    # The value is longer than the encoder allows, so check the limit with raw bytes.
    parser = TelemetryParser()
    parser.feed(exact)
    assert parser.stats.overlong == 0
    parser.feed(frame_with_payload(payload + b"v"))
    assert parser.stats.overlong == 1


def test_encoder_refuses_frames_over_the_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_frame(sample(extra=tuple((f"k{i}", "v" * 60) for i in range(5))))


def test_unknown_version_is_counted_not_parsed() -> None:
    parser = TelemetryParser()
    got = parser.feed(
        frame_with_payload(b"2,1,100,0.0,0.00,230.0,20.0,new=field") + encode_frame(sample(seq=2))
    )
    assert got == [sample(seq=2)]
    assert parser.stats.bad_version == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"1,1,100,0.0,0.00,230.0",  # too few fields
        b"1,x,100,0.0,0.00,230.0,20.0",
        b"1,1,-5,0.0,0.00,230.0,20.0",  # the register cannot be negative
        b"1,1,100,nan,0.00,230.0,20.0",
        b"1,1,100,1e3,0.00,230.0,20.0",
        b"1,70000,100,0.0,0.00,230.0,20.0",  # seq beyond the ring
        b"1,1,100,0.0,0.00,230.0,20.0,novalue",
        b"1,1,100,0.0,0.00,230.0,20.0,=v",
        b"v1,1,100,0.0,0.00,230.0,20.0",
        b"1,1,100,0.0,0.00,230.0,20.0,k=\xff",
    ],
)
def test_checksummed_but_malformed_frames_are_counted(payload: bytes) -> None:
    parser = TelemetryParser()
    assert parser.feed(frame_with_payload(payload)) == []
    assert parser.stats.malformed == 1


def feed_seqs(parser: TelemetryParser, seqs: list[int]) -> list[int]:
    stream = b"".join(encode_frame(sample(seq=s)) for s in seqs)
    return [s.seq for s in parser.feed(stream)]


def test_sequence_gap_counts_missing_frames() -> None:
    parser = TelemetryParser()
    assert feed_seqs(parser, [1, 2, 5, 6, 10]) == [1, 2, 5, 6, 10]
    assert parser.stats.seq_gaps == 2 + 3
    assert parser.stats.seq_resets == 0


def test_sequence_wraps_to_one_without_gap_or_reset() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [SEQ_MAX - 1, SEQ_MAX, 1, 2])
    assert parser.stats.seq_gaps == 0
    assert parser.stats.seq_resets == 0


def test_gap_across_the_wrap_is_a_gap() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [SEQ_MAX - 1, 2])
    assert parser.stats.seq_gaps == 2  # SEQ_MAX and 1 were lost
    assert parser.stats.seq_resets == 0


def test_boot_frame_zero_is_a_reset_even_right_before_a_wrap() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [SEQ_MAX - 2, SEQ_MAX - 1, 0, 1, 2])
    assert parser.stats.seq_resets == 1
    assert parser.stats.seq_gaps == 0


def test_sequence_going_backwards_is_a_reset() -> None:
    parser = TelemetryParser()
    # The boot frame 0 itself was lost: 500 -> 3 is still a reboot, not a gap.
    feed_seqs(parser, [499, 500, 3, 4])
    assert parser.stats.seq_resets == 1
    assert parser.stats.seq_gaps == 0


def test_first_frame_after_start_is_neither_gap_nor_reset() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [1234])
    assert parser.stats.seq_gaps == 0
    assert parser.stats.seq_resets == 0
    assert parser.last_seq == 1234


def test_boot_frame_then_one_is_continuous() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [0, 1, 2, 4])
    assert parser.stats.seq_gaps == 1
    assert parser.stats.seq_resets == 0


def test_discard_partial_keeps_sequence_tracking() -> None:
    parser = TelemetryParser()
    feed_seqs(parser, [1, 2])
    parser.feed(encode_frame(sample(seq=3))[:15])
    parser.discard_partial()
    assert feed_seqs(parser, [5]) == [5]
    assert parser.stats.seq_gaps == 2
    assert parser.stats.garbage == 0


def test_next_seq_wraps_over_one_to_seq_max() -> None:
    assert next_seq(0) == 1
    assert next_seq(1) == 2
    assert next_seq(SEQ_MAX) == 1
    assert next_seq(SEQ_MAX - 1, 3) == 2
    assert next_seq(0, 5) == 5
    with pytest.raises(ValueError):
        next_seq(SEQ_MAX + 1)


def test_extra_fields_are_preserved_in_order_with_duplicates() -> None:
    extra = (("fw", "1.4.2"), ("err", ""), ("err", "E12 relay weld?"), ("a.b-c", "x=y"))
    original = sample(extra=extra)
    assert TelemetryParser().feed(encode_frame(original)) == [original]


@pytest.mark.parametrize(
    "extra", [(("bad key", "v"),), (("k", "a,b"),), (("k", "a*b"),), (("k", "$"),), (("k", "é"),)]
)
def test_encoder_refuses_extras_that_would_break_framing(
    extra: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(ValueError):
        encode_frame(sample(extra=extra))


def test_encoder_refuses_non_finite_and_out_of_range_values() -> None:
    for bad in (
        sample(power_w=float("nan")),
        sample(voltage_v=float("inf")),
        sample(seq=SEQ_MAX + 1),
        sample(energy_wh=-1),
    ):
        with pytest.raises(ValueError):
            encode_frame(bad)


def test_negative_zero_is_written_as_zero() -> None:
    assert b",-0.0," not in encode_frame(sample(power_w=-0.01))


def random_sample(rng: random.Random) -> TelemetrySample:
    keys = ["fw", "rssi", "err", "up", "relay_fb", "t.cpu"]
    alphabet = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",*$")
    extra = tuple(
        (rng.choice(keys), "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
        for _ in range(rng.randint(0, 4))
    )
    return TelemetrySample(
        seq=rng.randint(0, SEQ_MAX),
        energy_wh=rng.randint(0, 10**10 - 1),
        power_w=round(rng.uniform(-100, 22_000), 1),
        current_a=round(rng.uniform(0, 80), 2),
        voltage_v=round(rng.uniform(180, 260), 1),
        temperature_c=round(rng.uniform(-40, 90), 1),
        extra=extra,
        channel=rng.randint(1, MAX_CHANNEL),
    )


def test_round_trip_random_samples() -> None:
    rng = random.Random(20240611)
    samples = [random_sample(rng) for _ in range(500)]
    stream = b"".join(encode_frame(s) for s in samples)
    parser = TelemetryParser()
    got: list[TelemetrySample] = []
    # Random chunking as a serial port would deliver it.
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, 300)
        got += parser.feed(stream[pos : pos + size])
        pos += size
    assert got == samples
    stats = parser.stats
    assert stats.frames_ok == 500
    assert stats.garbage == stats.bad_checksum == stats.malformed == stats.overlong == 0


def test_random_corruption_never_crashes_and_good_frames_survive() -> None:
    rng = random.Random(7)
    parser = TelemetryParser()
    delivered = intact = 0
    for n in range(1, 301):
        frame = bytearray(encode_frame(sample(seq=n)))
        corrupted = rng.random() < 0.3
        if corrupted:
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 5))) if n % 7 == 0 else b""
        got = parser.feed(bytes(frame) + noise.replace(b"$", b"#") + b"\r\n")
        delivered += len(got)
        if not corrupted:
            intact += 1
            assert [s.seq for s in got] == [n]
    assert parser.stats.frames_ok == delivered >= intact > 150


# -- acknowledgements on the telemetry line ---------------------------------------------

COMMAND_EXAMPLES = (
    b"$C,1,PING,10000*BAE1\r\n",
    b"$C,2,RLY,1,1*D730\r\n",
    b"$C,4,LIM,2,16.0*AC87\r\n",
)
ACK_EXAMPLES = (
    b"$A,1,OK*EF98\r\n",
    b"$A,2,OK,rly=1*B97F\r\n",
    b"$A,65535,ERR,bad-channel*A6BC\r\n",
)


def test_protocol_md_command_and_ack_examples_are_the_vectors() -> None:
    document = PROTOCOL_MD.read_text(encoding="utf-8")
    vectors = (PROTOCOL_MD.parent / "vectors.json").read_text(encoding="utf-8")
    for line in (*COMMAND_EXAMPLES, *ACK_EXAMPLES):
        text = line.decode().rstrip()
        assert text in document
        assert text in vectors


def test_acks_between_frames_are_parsed_in_line_order() -> None:
    parser = TelemetryParser()
    stream = EXAMPLES[1] + ACK_EXAMPLES[1] + EXAMPLES[2] + ACK_EXAMPLES[2]
    got = parser.feed_all(stream)
    assert [type(item).__name__ for item in got] == [
        "TelemetrySample",
        "Ack",
        "TelemetrySample",
        "Ack",
    ]
    assert got[1] == Ack(2, ok=True, fields=(("rly", "1"),))
    assert got[3] == Ack(65535, ok=False, reason="bad-channel")
    assert parser.stats.acks == 2 and parser.stats.frames_ok == 2
    # feed() is for receivers that send no commands: the acks are counted, not returned.
    plain = TelemetryParser()
    assert [s.seq for s in plain.feed(stream)] == [1, 2]
    assert plain.stats.acks == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"A",
        b"A,1",
        b"A,0,OK",
        b"A,65536,OK",
        b"A,x,OK",
        b"A,1,MAYBE",
        b"A,1,ERR",
        b"A,1,ERR,Bad-Reason",
        b"A,1,ERR,a,b",
        b"A,1,OK,novalue",
    ],
)
def test_malformed_acks_are_counted(payload: bytes) -> None:
    parser = TelemetryParser()
    assert parser.feed_all(frame_with_payload(payload)) == []
    assert parser.stats.malformed == 1 and parser.stats.acks == 0


def test_ack_encoder_refuses_what_the_parser_would() -> None:
    with pytest.raises(ValueError):
        encode_ack(Ack(0, ok=True))
    with pytest.raises(ValueError):
        encode_ack(Ack(1, ok=False))  # an ERR needs its reason
    with pytest.raises(ValueError):
        encode_ack(Ack(1, ok=True, fields=(("rly", "a,b"),)))
    assert Ack(3, ok=True, fields=(("rly", "0"),)).field("rly") == "0"
    assert Ack(3, ok=True).field("rly") is None
