"""A PN532 modelled at its I2C host link, so the real adafruit driver can run against it.

What the model does, and why (after NXP UM0701-02 and how the chip behaves on I2C):

- Every I2C read starts with the status byte: 0x01 when a frame is waiting, 0x00
  otherwise. A read of one byte only peeks at the status; a longer read takes the
  waiting frame, and bytes past its end read as 0x00 (the driver reads a fixed
  count and skips zero padding).
- A valid command frame is answered with an ACK frame, then with its response
  frame once the response exists. A frame with a bad checksum gets no ACK at all
  (the chip drops it and the host times out). A host ACK frame aborts the command
  in progress; a host NACK asks for the last response again.
- A new command frame replaces whatever is still waiting, as on the real chip.
- A frame that is well formed but carries an unknown command, a wrong TFI or bad
  parameters is ACKed and then answered with the syntax error frame (data 0x7F),
  as the firmware does; the adafruit driver turns that into a RuntimeError.
- InListPassiveTarget (106 kbps type A) with no card in the field stays not-ready:
  with the default MxRtyPassiveActivation (0xFF) the chip retries forever and
  only answers when a card shows up, so the driver's own timeout ends the wait.

Cards are presented from another thread (the event loop) while the driver polls
from its worker thread, so all state sits behind one lock.
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


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """How many frames the emulated chip has seen, by kind."""

    commands: Mapping[int, int]  # command code -> frames received
    bad_frames: int  # dropped for a bad checksum or preamble; no ACK was sent
    aborts: int  # host ACK frames that cancelled a command
    nacks: int
    syntax_errors: int


@dataclass(slots=True)
class _Card:
    uid: bytes
    leaves_at: float


@dataclass(slots=True)
class _WaitForCard:
    """A response that only exists once a card enters the field."""

    # Only 106 kbps type A is modelled; a poll for any other kind never finds one.
    type_a: bool


_Pending: TypeAlias = bytes | _WaitForCard


class Pn532Emulator:
    """The chip behind address 0x24: takes host frames, hands out status bytes and frames."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._outbox: deque[_Pending] = deque()
        self._last_response: bytes | None = None
        self._card: _Card | None = None
        self._corrupt_next = False
        self._commands: Counter[int] = Counter()
        self._bad_frames = 0
        self._aborts = 0
        self._nacks = 0
        self._syntax_errors = 0

    # -- the world outside the chip ------------------------------------------------

    def present_card(self, uid: bytes, dwell_s: float = 0.3) -> None:
        """Hold a card with `uid` in the field for `dwell_s` seconds from now."""
        if len(uid) not in UID_SIZES:
            raise ValueError(f"an ISO 14443A UID has 4, 7 or 10 bytes, got {len(uid)}")
        if dwell_s <= 0:
            raise ValueError("dwell_s must be positive")
        with self._lock:
            self._card = _Card(bytes(uid), self._monotonic() + dwell_s)

    def remove_card(self) -> None:
        """Take the card out of the field now."""
        with self._lock:
            self._card = None

    def corrupt_next_response(self) -> None:
        """Flip the data checksum of the next response frame the host reads (ACKs stay intact)."""
        with self._lock:
            self._corrupt_next = True

    def card_in_field(self) -> bytes | None:
        """Return the UID of the card in the field, if any."""
        with self._lock:
            card = self._card_now()
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
            )

    def commands_seen(self, command: int) -> int:
        """Count the valid command frames with this command code received so far."""
        with self._lock:
            return self._commands[command]

    # -- the I2C host link ---------------------------------------------------------

    def i2c_write(self, data: bytes) -> None:
        """Take one I2C write transaction from the host."""
        frame = bytes(data)
        with self._lock:
            # The bus probe writes zero bytes to see whether the address ACKs.
            if not frame:
                return
            if frame == ACK:
                self._aborts += 1
                self._outbox.clear()
                return
            if frame == NACK:
                self._nacks += 1
                self._outbox.clear()
                if self._last_response is not None:
                    self._outbox.append(self._last_response)
                return
            try:
                payload = decode_frame(frame)
            except FrameError:
                self._bad_frames += 1
                return
            self._outbox.clear()
            self._outbox.append(ACK)
            self._outbox.append(self._execute(payload))

    def i2c_read(self, count: int) -> bytes:
        """Answer one I2C read transaction of `count` bytes: status byte, then the waiting frame."""
        if count <= 0:
            return b""
        with self._lock:
            frame = self._ready_frame()
            if frame is None:
                return bytes(count)  # status 0x00 and nothing behind it
            if count == 1:
                return bytes((STATUS_READY,))
            self._outbox.popleft()
            if frame != ACK:
                frame = self._maybe_corrupt(frame)
                self._last_response = frame
            body = frame[: count - 1]
            return bytes((STATUS_READY,)) + body + bytes(count - 1 - len(body))

    # -- inside the chip (lock held) -------------------------------------------------

    def _card_now(self) -> _Card | None:
        card = self._card
        if card is not None and self._monotonic() >= card.leaves_at:
            self._card = None
            card = None
        return card

    def _ready_frame(self) -> bytes | None:
        if not self._outbox:
            return None
        head = self._outbox[0]
        if isinstance(head, _WaitForCard):
            card = self._card_now()
            if card is None or not head.type_a:
                return None
            # The chip answers as soon as it has activated the card; pin the answer
            # so a card leaving between status poll and read cannot unready it.
            head = self._target_response(card)
            self._outbox[0] = head
        return head

    def _maybe_corrupt(self, frame: bytes) -> bytes:
        if not self._corrupt_next:
            return frame
        self._corrupt_next = False
        dcs_index = len(frame) - 2
        return frame[:dcs_index] + bytes((frame[dcs_index] ^ 0xFF,)) + frame[dcs_index + 1 :]

    def _execute(self, payload: bytes) -> _Pending:
        if len(payload) < 2 or payload[0] != HOST_TO_PN532:
            return self._syntax_error()
        command, params = payload[1], payload[2:]
        self._commands[command] += 1
        if command == CMD_GET_FIRMWARE_VERSION and not params:
            return self._response(command, FIRMWARE_VERSION)
        if command == CMD_SAM_CONFIGURATION and 1 <= len(params) <= 3 and 1 <= params[0] <= 4:
            return self._response(command, b"")
        if command == CMD_POWER_DOWN and 1 <= len(params) <= 2:
            return self._response(command, b"\x00")
        if command == CMD_IN_LIST_PASSIVE_TARGET and len(params) >= 2 and params[0] in (1, 2):
            return _WaitForCard(type_a=params[1] == BAUD_106_TYPE_A)
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
