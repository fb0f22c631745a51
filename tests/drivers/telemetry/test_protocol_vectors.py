"""hardware/vectors.json against both implementations: the Python codec and the firmware's C."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.commands import (
    Command,
    CommandEvent,
    CommandParser,
    CurrentLimit,
    LineError,
    ReceivedCommand,
    Refusal,
    RefusedCommand,
    RelayState,
    WatchdogPing,
    encode_command,
)
from edgepoint.drivers.telemetry.frames import (
    Ack,
    TelemetryParser,
    crc16_ccitt_false,
    encode_ack,
    encode_frame,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = json.loads((ROOT / "hardware" / "vectors.json").read_text(encoding="utf-8"))
FIRMWARE = ROOT / "hardware" / "firmware"


def wire(text: str) -> bytes:
    return text.encode("latin-1")


def sample_of(vector: dict[str, Any]) -> TelemetrySample:
    return TelemetrySample(
        seq=vector["seq"],
        energy_wh=vector["energy_wh"],
        power_w=vector["power_w"],
        current_a=vector["current_a"],
        voltage_v=vector["voltage_v"],
        temperature_c=vector["temperature_c"],
        extra=tuple((key, value) for key, value in vector["extra"]),
        channel=vector["channel"],
    )


def command_of(spec: dict[str, Any]) -> Command:
    if spec["verb"] == "PING":
        return WatchdogPing(spec["timeout_ms"])
    if spec["verb"] == "RLY":
        return RelayState(spec["channel"], spec["closed"])
    return CurrentLimit(spec["channel"], spec["amps"])


def ack_of(spec: dict[str, Any]) -> Ack:
    fields = tuple((key, value) for key, value in spec.get("fields", []))
    return Ack(spec["id"], spec["ok"], fields, spec.get("reason"))


def event_of(spec: Any) -> CommandEvent:
    if isinstance(spec, str):
        return LineError(spec)
    if "refused" in spec:
        return RefusedCommand(spec["refused"]["id"], Refusal(spec["refused"]["reason"]))
    return ReceivedCommand(spec["command"]["id"], command_of(spec["command"]))


def ids(vectors: list[dict[str, Any]], key: str) -> list[str]:
    return [str(vector.get(key, index)) for index, vector in enumerate(vectors)]


# -- Python ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["crc16"], ids=ids(VECTORS["crc16"], "data"))
def test_python_crc(vector: dict[str, Any]) -> None:
    assert f"{crc16_ccitt_false(wire(vector['data'])):04X}" == vector["crc"]


@pytest.mark.parametrize("vector", VECTORS["telemetry"], ids=ids(VECTORS["telemetry"], "seq"))
def test_python_telemetry_encodes_and_parses(vector: dict[str, Any]) -> None:
    sample = sample_of(vector)
    assert encode_frame(sample) == wire(vector["frame"])
    (parsed,) = TelemetryParser().feed(wire(vector["frame"]))
    # The wire keeps the places of PROTOCOL.md: -0.04 °C reads back as 0.0.
    assert parsed == TelemetrySample(
        seq=sample.seq,
        energy_wh=sample.energy_wh,
        power_w=round(sample.power_w, 1),
        current_a=round(sample.current_a, 2),
        voltage_v=round(sample.voltage_v, 1),
        temperature_c=round(sample.temperature_c, 1) + 0.0,
        extra=sample.extra,
        channel=sample.channel,
    )


@pytest.mark.parametrize("vector", VECTORS["commands"], ids=ids(VECTORS["commands"], "frame"))
def test_python_commands_encode_and_parse(vector: dict[str, Any]) -> None:
    command = command_of(vector["command"])
    assert encode_command(vector["id"], command) == wire(vector["frame"])
    assert CommandParser().feed(wire(vector["frame"])) == [ReceivedCommand(vector["id"], command)]


@pytest.mark.parametrize("vector", VECTORS["acks"], ids=ids(VECTORS["acks"], "frame"))
def test_python_acks_encode_and_parse(vector: dict[str, Any]) -> None:
    ack = ack_of(vector["ack"])
    assert encode_ack(ack) == wire(vector["frame"])
    parser = TelemetryParser()
    assert parser.feed_all(wire(vector["frame"])) == [ack]
    assert parser.stats.acks == 1 and parser.stats.malformed == 0


@pytest.mark.parametrize(
    "vector", VECTORS["command_streams"], ids=ids(VECTORS["command_streams"], "name")
)
def test_python_command_streams(vector: dict[str, Any]) -> None:
    expected = [event_of(spec) for spec in vector["events"]]
    assert CommandParser().feed(wire(vector["input"])) == expected
    # Byte by byte, as the firmware's UART hands them over: the same events.
    parser = CommandParser()
    assert [event for byte in wire(vector["input"]) for event in parser.feed(bytes((byte,)))] == (
        expected
    )


def test_every_refusal_and_line_error_has_a_vector() -> None:
    events = [event_of(spec) for vector in VECTORS["command_streams"] for spec in vector["events"]]
    reasons = {event.reason for event in events if isinstance(event, RefusedCommand)}
    assert reasons == set(Refusal)
    assert {event for event in events if isinstance(event, LineError)} == set(LineError)


# -- C (the firmware's protocol.c, compiled for this machine) ----------------------------


def c_event(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if "refused" in spec:
        return f"refused {spec['refused']['id']} {spec['refused']['reason']}"
    command = spec["command"]
    if command["verb"] == "PING":
        return f"command {command['id']} PING {command['timeout_ms']}"
    if command["verb"] == "RLY":
        return f"command {command['id']} RLY {command['channel']} {int(command['closed'])}"
    return f"command {command['id']} LIM {command['channel']} {round(command['amps'] * 10)}"


def fields_arg(fields: list[list[str]]) -> str:
    return "".join(f" {key}={value.encode('latin-1').hex()}" for key, value in fields)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("firmware") / "vector_runner"
    subprocess.run(
        [
            gcc,
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Wconversion",
            "-pedantic",
            "-Werror",
            "-O2",
            str(FIRMWARE / "src" / "protocol.c"),
            str(FIRMWARE / "test" / "vector_runner.c"),
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return binary


def run_c(runner: Path, requests: list[str]) -> list[str]:
    result = subprocess.run(
        [str(runner)],
        input="".join(line + "\n" for line in requests),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.splitlines()


def test_c_crc(runner: Path) -> None:
    vectors = VECTORS["crc16"]
    answers = run_c(runner, [f"crc {wire(v['data']).hex()}" for v in vectors])
    assert answers == [v["crc"] for v in vectors]


def test_c_telemetry_encoder(runner: Path) -> None:
    vectors = VECTORS["telemetry"]
    requests = [
        f"tel {v['seq']} {v['energy_wh']} {round(v['power_w'] * 10)} {round(v['current_a'] * 100)}"
        f" {round(v['voltage_v'] * 10)} {round(v['temperature_c'] * 10)} {v['channel']}"
        + fields_arg(v["extra"])
        for v in vectors
    ]
    assert run_c(runner, requests) == [wire(v["frame"]).hex() for v in vectors]


def refused(**changes: Any) -> TelemetrySample:
    base = {"seq": 1, "energy_wh": 1, "power_w": 0.0, "current_a": 0.0, "voltage_v": 0.0}
    return TelemetrySample(**{"temperature_c": 0.0, **base, **changes})


# (what the C runner is asked, the same sample for the Python encoder)
REFUSED = [
    ("tel 1 10000000000 0 0 0 0 1", refused(energy_wh=10**10)),  # 11 digits of energy
    ("tel 1 1 0 0 0 0 9", refused(channel=9)),
    ("tel 1 1 0 0 0 0 1 ch=32", refused(extra=(("ch", "2"),))),  # the channel is no extra
    ("tel 1 1 0 0 0 0 1 9bad=31", refused(extra=(("9bad", "1"),))),
    (f"tel 1 1 0 0 0 0 1 v={b'a,b'.hex()}", refused(extra=(("v", "a,b"),))),
    # Four 60-byte extras make a frame of more than 256 bytes.
    (
        "tel 1 1 0 0 0 0 1" + "".join(f" k{i}={(b'x' * 60).hex()}" for i in range(4)),
        refused(extra=tuple((f"k{i}", "x" * 60) for i in range(4))),
    ),
]


def test_c_telemetry_encoder_refuses_what_python_refuses(runner: Path) -> None:
    for _, sample in REFUSED:
        with pytest.raises(ValueError):
            encode_frame(sample)
    assert run_c(runner, [request for request, _ in REFUSED]) == ["error"] * len(REFUSED)


def test_c_ack_encoder(runner: Path) -> None:
    vectors = VECTORS["acks"]
    requests = []
    for v in vectors:
        ack = v["ack"]
        if ack["ok"]:
            requests.append(f"ackok {ack['id']}" + fields_arg(ack["fields"]))
        else:
            requests.append(f"ackerr {ack['id']} {ack['reason']}")
    assert run_c(runner, requests) == [wire(v["frame"]).hex() for v in vectors]


def test_c_command_parser(runner: Path) -> None:
    streams = [
        (f"commands[{v['id']}]", v["frame"], [{"command": {**v["command"], "id": v["id"]}}])
        for v in VECTORS["commands"]
    ] + [(v["name"], v["input"], v["events"]) for v in VECTORS["command_streams"]]
    answers = run_c(runner, [f"rx {wire(text).hex()}" for _, text, _ in streams])
    got: list[list[str]] = [[]]
    for line in answers:
        if line == "end":
            got.append([])
        else:
            got[-1].append(line)
    assert got[-1] == []
    for (name, _, events), lines in zip(streams, got[:-1], strict=True):
        assert lines == [c_event(spec) for spec in events], name
