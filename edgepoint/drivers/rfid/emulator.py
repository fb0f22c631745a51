"""A PN532 modelled at its host link, so the real adafruit driver can run against it.

What the model does, and why (after NXP UM0701-02 and how the chip behaves):

- The chip core takes host frames and hands out frames; the links (I2C here, SPI
  and UART in bus.py) only differ in how the host asks. On I2C every read starts
  with the status byte: 0x01 when a frame is waiting, 0x00 otherwise. A read of one
  byte only peeks at the status; a longer read takes the waiting frame, and bytes
  past its end read as 0x00 (the driver reads a fixed count and skips padding).
- A valid command frame is answered with an ACK frame, then with its response
  frame once the response exists. A frame with a bad checksum gets no ACK at all
  (the chip drops it and the host times out). A host ACK frame aborts the command
  in progress; a host NACK asks for the last response again.
- A new command frame replaces whatever is still waiting, as on the real chip.
- A frame that is well formed but carries an unknown command, a wrong TFI or bad
  parameters is ACKed and then answered with the syntax error frame (data 0x7F),
  as the firmware does; the adafruit driver turns that into a RuntimeError.
- InListPassiveTarget (106 kbps type A) with no card in the field stays not-ready:
  with the default MxRtyPassiveActivation (0xFF) the chip retries on its own until
  a card shows up, however long the host takes to look. So the answer is latched
  the moment a card is visible while the command waits, and it stays ready until
  the host reads it, even if the card has left meanwhile.
- The IRQ line (P70_IRQ, active low) is asserted while a frame is waiting; a
  listener connected with `connect_irq` hears every change.
- Flicker: a real reader alternates "card" and "no card" for a card held still.
  With `flicker` set, a card in the field is visible for `on_s`, then not for
  `off_s`, and so on, from the moment it is presented.
- Faults to inject: a chip that stops answering (`hang`: no ACK, nothing ready),
  a wrong answer to GetFirmwareVersion (`set_firmware`), a garbled response
  (`corrupt_next_response`); an unplugged chip is the bus's business (detach).

Cards are presented from the event loop while the driver polls from its worker
thread, so all state sits behind one lock. The chip's time is `monotonic`; the
answers are computed when somebody looks, from when the card was visible.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from edgepoint.drivers.rfid.frames import (
    ACK,
    HOST_TO_PN532,
    NACK,
    PN532_TO_HOST,
    SYNTAX_ERROR_TFI,
    FrameError,
    decode_frame,
    encode_frame,
)

I2C_ADDRESS = 0x24
STATUS_READY = 0x01
STATUS_BUSY = 0x00

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_POWER_DOWN = 0x16
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

FIRMWARE_VERSION = bytes((0x32, 0x01, 0x06, 0x07))  # IC, Ver, Rev, Support
BAUD_106_TYPE_A = 0x00

# ISO 14443-3 allows single (4), double (7) and triple (10) size UIDs.
UID_SIZES = (4, 7, 10)
# ATQA/SAK of typical cards of each UID size: MIFARE Classic 1K, Ultralight/NTAG,
# and a triple-size UID card (which the adafruit driver refuses: it caps UIDs at 7).
_ATQA_SAK = {4: (b"\x00\x04", 0x08), 7: (b"\x00\x44", 0x00), 10: (b"\x00\x84", 0x00)}

_ERROR_FRAME = encode_frame(bytes((SYNTAX_ERROR_TFI,)))

IrqListener = Callable[[bool], None]


@dataclass(frozen=True, slots=True)
class Flicker:
    """A held card is seen for `on_s`, then missed for `off_s`, again and again."""

    on_s: float
    off_s: float

    def __post_init__(self) -> None:
        if self.on_s <= 0 or self.off_s <= 0:
            raise ValueError(f"flicker needs positive on and off times: {self}")


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """How many frames the emulated chip has seen, by kind."""

    commands: Mapping[int, int]  # command code -> frames received
    bad_frames: int  # dropped for a bad checksum or preamble; no ACK was sent
    aborts: int  # host ACK frames that cancelled a command
    nacks: int
    syntax_errors: int
    status_reads: int = 0  # one-byte status reads (the host polling while it waits)


@dataclass(slots=True)
class _Card:
    uid: bytes
    presented_at: float
    leaves_at: float


@dataclass(slots=True)
class _Listen:
    """A pending InListPassiveTarget: answered once a card is visible."""

    # Only 106 kbps type A is modelled; a poll for any other kind never finds one.
    type_a: bool
    armed_at: float


_Pending: TypeAlias = bytes | _Listen


class Pn532Emulator:
    """The chip: takes host frames, hands out status and frames, watches its field."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        flicker: Flicker | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._outbox: deque[_Pending] = deque()
        self._last_response: bytes | None = None
        self._card: _Card | None = None
        self._flicker = flicker
        self._firmware = FIRMWARE_VERSION
        self._hung = False
        self._corrupt_next = False
        self._commands: Counter[int] = Counter()
        self._bad_frames = 0
        self._aborts = 0
        self._nacks = 0
        self._syntax_errors = 0
        self._status_reads = 0
        self._irq: IrqListener | None = None
        self._irq_level = False
        self._edge_timer: threading.Timer | None = None

    # -- the world outside the chip ------------------------------------------------

    def present_card(self, uid: bytes, dwell_s: float = 0.3) -> None:
        """Hold a card with `uid` in the field for `dwell_s` seconds from now."""
        if len(uid) not in UID_SIZES:
            raise ValueError(f"an ISO 14443A UID has 4, 7 or 10 bytes, got {len(uid)}")
        if dwell_s <= 0:
            raise ValueError("dwell_s must be positive")
        with self._lock:
            now = self._monotonic()
            self._settle(now)  # a waiting command may have seen the previous card
            self._card = _Card(bytes(uid), now, now + dwell_s)
            self._changed(now)

    def remove_card(self) -> None:
        """Take the card out of the field now."""
        with self._lock:
            now = self._monotonic()
            self._settle(now)
            self._card = None
            self._changed(now)

    @property
    def flicker(self) -> Flicker | None:
        """How a held card flickers; None: it is seen all the time it is in the field."""
        return self._flicker

    @flicker.setter
    def flicker(self, flicker: Flicker | None) -> None:
        with self._lock:
            now = self._monotonic()
            self._settle(now)
            self._flicker = flicker
            self._changed(now)

    def set_firmware(self, answer: bytes) -> None:
        """Fault injection: answer GetFirmwareVersion with these bytes (a clone, a PN531)."""
        with self._lock:
            self._firmware = bytes(answer)

    def hang(self, hung: bool = True) -> None:
        """Fault injection: stop answering (no ACK, nothing ready), or answer again."""
        with self._lock:
            self._hung = hung
            if hung:
                self._outbox.clear()
            self._changed(self._monotonic())

    def corrupt_next_response(self) -> None:
        """Flip the data checksum of the next response frame the host reads (ACKs stay intact)."""
        with self._lock:
            self._corrupt_next = True

    def connect_irq(self, listener: IrqListener | None) -> None:
        """Hear the IRQ line: `listener(True)` when a frame becomes ready, False when taken.

        The listener runs in whichever thread changed the line, with the chip's lock
        held: it must not call back into the chip.
        """
        with self._lock:
            self._irq = listener
            self._irq_level = self._ready_frame() is not None
            if listener is not None:
                listener(self._irq_level)

    def card_in_field(self) -> bytes | None:
        """Return the UID of the card in the field (flickering or not), if any."""
        with self._lock:
            card = self._card_now(self._monotonic())
            return card.uid if card else None

    @property
    def stats(self) -> EmulatorStats:
        """Snapshot of the frame counters."""
        with self._lock:
            return EmulatorStats(
                commands=dict(self._commands),
                bad_frames=self._bad_frames,
                aborts=self._aborts,
                nacks=self._nacks,
                syntax_errors=self._syntax_errors,
                status_reads=self._status_reads,
            )

    def commands_seen(self, command: int) -> int:
        """Count the valid command frames with this command code received so far."""
        with self._lock:
            return self._commands[command]

    # -- the host link, whatever the bus -------------------------------------------

    def host_write(self, frame: bytes) -> None:
        """Take one frame (or ACK/NACK) written by the host."""
        frame = bytes(frame)
        with self._lock:
            now = self._monotonic()
            # The bus probe writes zero bytes to see whether the address ACKs.
            if not frame or self._hung:
                return
            if frame == ACK:
                self._aborts += 1
                self._outbox.clear()
            elif frame == NACK:
                self._nacks += 1
                self._outbox.clear()
                if self._last_response is not None:
                    self._outbox.append(self._last_response)
            else:
                try:
                    payload = decode_frame(frame)
                except FrameError:
                    self._bad_frames += 1
                    return
                self._outbox.clear()
                self._outbox.append(ACK)
                self._outbox.append(self._execute(payload, now))
            self._changed(now)

    def response_ready(self) -> bool:
        """The status the host would read now: whether a frame is waiting."""
        with self._lock:
            self._status_reads += 1
            outbox = self._outbox
            if self._hung or not outbox:
                return False
            if not isinstance(outbox[0], bytes):
                self._settle(self._monotonic())
            return isinstance(outbox[0], bytes)

    def take_frame(self) -> bytes | None:
        """Hand the waiting frame to the host, exactly; None when nothing is ready."""
        with self._lock:
            now = self._monotonic()
            self._settle(now)
            frame = self._ready_frame()
            if frame is None:
                return None
            self._outbox.popleft()
            if frame != ACK:
                frame = self._maybe_corrupt(frame)
                self._last_response = frame
            self._changed(now)
            return frame

    # -- the I2C link ----------------------------------------------------------------

    def i2c_write(self, data: bytes) -> None:
        """Take one I2C write transaction from the host."""
        self.host_write(data)

    def i2c_read(self, count: int) -> bytes:
        """Answer one I2C read transaction of `count` bytes: status byte, then the waiting frame."""
        if count <= 0:
            return b""
        if count == 1:
            return bytes((STATUS_READY if self.response_ready() else STATUS_BUSY,))
        frame = self.take_frame()
        if frame is None:
            return bytes(count)  # status 0x00 and nothing behind it
        body = frame[: count - 1]
        return bytes((STATUS_READY,)) + body + bytes(count - 1 - len(body))

    # -- inside the chip (lock held) -------------------------------------------------

    def _card_now(self, now: float) -> _Card | None:
        card = self._card
        if card is not None and now >= card.leaves_at:
            self._card = None
            card = None
        return card

    def _first_visible(self, start: float, end: float) -> float | None:
        """The first instant in [start, end] at which the card is seen, if any."""
        card = self._card
        if card is None:
            return None
        t = max(start, card.presented_at)
        if t > end or t >= card.leaves_at:
            return None
        flicker = self._flicker
        if flicker is None:
            return t
        period = flicker.on_s + flicker.off_s
        phase = (t - card.presented_at) % period
        if phase >= flicker.on_s:
            t += period - phase
        return t if t <= end and t < card.leaves_at else None

    def _settle(self, now: float) -> None:
        """Answer a waiting InListPassiveTarget if its card was seen since it was sent."""
        if not self._outbox:
            return
        head = self._outbox[0]
        if not isinstance(head, _Listen) or not head.type_a:
            return
        if self._first_visible(head.armed_at, now) is not None:
            assert self._card is not None
            self._outbox[0] = self._target_response(self._card)

    def _changed(self, now: float) -> None:
        """Settle, then tell the IRQ listener if the line moved; time the next flicker edge."""
        self._settle(now)
        ready = self._ready_frame() is not None
        if self._irq is not None and ready != self._irq_level:
            self._irq_level = ready
            self._irq(ready)
        self._schedule_edge(now)

    def _schedule_edge(self, now: float) -> None:
        # Only a listener needs to hear a flickering card come back by itself; anyone
        # who polls settles the answer when looking.
        if self._edge_timer is not None:
            self._edge_timer.cancel()
            self._edge_timer = None
        if self._irq is None or not self._outbox:
            return
        head = self._outbox[0]
        if not isinstance(head, _Listen) or self._card is None:
            return
        upcoming = self._first_visible(now, self._card.leaves_at)
        if upcoming is None or upcoming <= now:
            return
        timer = threading.Timer(upcoming - now, self._edge)
        timer.daemon = True
        self._edge_timer = timer
        timer.start()

    def _edge(self) -> None:
        with self._lock:
            self._edge_timer = None
            self._changed(self._monotonic())

    def _ready_frame(self) -> bytes | None:
        if self._hung or not self._outbox:
            return None
        head = self._outbox[0]
        return head if isinstance(head, bytes) else None

    def _maybe_corrupt(self, frame: bytes) -> bytes:
        if not self._corrupt_next:
            return frame
        self._corrupt_next = False
        dcs_index = len(frame) - 2
        return frame[:dcs_index] + bytes((frame[dcs_index] ^ 0xFF,)) + frame[dcs_index + 1 :]

    def _execute(self, payload: bytes, now: float) -> _Pending:
        if len(payload) < 2 or payload[0] != HOST_TO_PN532:
            return self._syntax_error()
        command, params = payload[1], payload[2:]
        self._commands[command] += 1
        if command == CMD_GET_FIRMWARE_VERSION and not params:
            return self._response(command, self._firmware)
        if command == CMD_SAM_CONFIGURATION and 1 <= len(params) <= 3 and 1 <= params[0] <= 4:
            return self._response(command, b"")
        if command == CMD_POWER_DOWN and 1 <= len(params) <= 2:
            return self._response(command, b"\x00")
        if command == CMD_IN_LIST_PASSIVE_TARGET and len(params) >= 2 and params[0] in (1, 2):
            return _Listen(type_a=params[1] == BAUD_106_TYPE_A, armed_at=now)
        return self._syntax_error()

    def _syntax_error(self) -> bytes:
        self._syntax_errors += 1
        return _ERROR_FRAME

    @staticmethod
    def _response(command: int, data: bytes) -> bytes:
        return encode_frame(bytes((PN532_TO_HOST, command + 1)) + data)

    def _target_response(self, card: _Card) -> bytes:
        atqa, sak = _ATQA_SAK[len(card.uid)]
        target = bytes((0x01,)) + atqa + bytes((sak, len(card.uid))) + card.uid
        return self._response(CMD_IN_LIST_PASSIVE_TARGET, bytes((0x01,)) + target)
