"""Emulated buses with the busio (I2C, SPI) and pyserial (UART) surfaces, wired to a PN532 model."""

from __future__ import annotations

import errno
import os
import threading
from types import TracebackType
from typing import Protocol

from edgepoint.drivers.rfid.emulator import I2C_ADDRESS, STATUS_READY, Pn532Emulator

# The Pi's i2c-bcm2835 adapter reports an address nobody ACKs as EREMOTEIO
# ("[Errno 121] Remote I/O error"), which is what a missing PN532 looks like there.
ABSENT_ERRNO = errno.EREMOTEIO


class I2CDevice(Protocol):
    """A device model that answers I2C write and read transactions."""

    def i2c_write(self, data: bytes) -> None: ...

    def i2c_read(self, count: int) -> bytes: ...


class EmulatedI2CBus:
    """Stands in for `busio.I2C`: routes each address to a device model, others NAK.

    Like busio on a microcontroller (and unlike Blinka, which does not check),
    transfers need the lock, so a driver that forgets `try_lock` fails here too.
    """

    def __init__(self, devices: dict[int, I2CDevice] | None = None) -> None:
        self._devices: dict[int, I2CDevice] = dict(devices or {})
        self._detached: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def with_pn532(cls, emulator: Pn532Emulator) -> EmulatedI2CBus:
        """Build a bus with `emulator` at the PN532's fixed address 0x24."""
        return cls({I2C_ADDRESS: emulator})

    # -- fault injection ---------------------------------------------------------

    def detach(self, address: int) -> None:
        """Make the device at `address` stop answering, as if its cable came loose."""
        self._detached.add(address)

    def attach(self, address: int) -> None:
        """Let a detached device answer again."""
        self._detached.discard(address)

    # -- busio.I2C surface -------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the bus lock without waiting; False if someone else holds it."""
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        """Release the bus lock (a no-op when it is not held, as in Blinka)."""
        if self._lock.locked():
            self._lock.release()

    def scan(self) -> list[int]:
        """List the addresses that answer."""
        self._check_usable()
        return sorted(a for a in self._devices if a not in self._detached)

    def writeto(
        self, address: int, buffer: bytes | bytearray, *, start: int = 0, end: int | None = None
    ) -> None:
        """Write `buffer[start:end]` to the device at `address` in one transaction."""
        device = self._device(address)
        device.i2c_write(bytes(memoryview(buffer)[start:end]))

    def readfrom_into(
        self, address: int, buffer: bytearray, *, start: int = 0, end: int | None = None
    ) -> None:
        """Fill `buffer[start:end]` from the device at `address` in one transaction."""
        device = self._device(address)
        stop = len(buffer) if end is None else end
        buffer[start:stop] = device.i2c_read(stop - start)

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: bytes | bytearray,
        buffer_in: bytearray,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
        stop: bool = False,
    ) -> None:
        """Write then read with a repeated start, as one combined transfer."""
        self.writeto(address, buffer_out, start=out_start, end=out_end)
        self.readfrom_into(address, buffer_in, start=in_start, end=in_end)

    def deinit(self) -> None:
        """Release the bus; later transfers fail as on a closed /dev/i2c-N."""
        self._closed = True

    def __enter__(self) -> EmulatedI2CBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deinit()

    # -- internals -----------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def _device(self, address: int) -> I2CDevice:
        self._check_usable()
        if not self._lock.locked():
            raise RuntimeError("Function requires lock")
        device = self._devices.get(address)
        if device is None or address in self._detached:
            raise OSError(ABSENT_ERRNO, os.strerror(ABSENT_ERRNO))
        return device


# -- SPI ---------------------------------------------------------------------------------

# UM0701-02 6.2.5: the first byte of an SPI exchange says what the host wants. The
# PN532 sends and receives LSB first; busio is MSB first, so the adafruit driver
# reverses the bits of every byte, and so does this bus.
SPI_DATA_WRITE = 0x01
SPI_STATUS_READ = 0x02
SPI_DATA_READ = 0x03


def reverse_bits(byte: int) -> int:
    """Mirror the 8 bits of `byte` (LSB-first on the wire <-> MSB-first in busio)."""
    return int(f"{byte:08b}"[::-1], 2)


class EmulatedPin:
    """A digitalio.DigitalInOut stand-in: the chip select the SPI driver drives."""

    def __init__(self, value: bool = True) -> None:
        self.value = value
        self.direction: object = None

    def switch_to_output(self, value: bool = False, drive_mode: object = None) -> None:
        """Make the pin an output at `value` (as digitalio does)."""
        self.value = value

    def deinit(self) -> None:
        """Release the pin (nothing to do here)."""


class EmulatedSpiBus:
    """Stands in for `busio.SPI` with a PN532 behind chip select `cs` (active low).

    Each write (or write-and-read) while CS is low is one exchange; its first byte
    is the operation. `detach` leaves MISO floating high, as an unplugged board does.
    """

    def __init__(self, chip: Pn532Emulator, cs: EmulatedPin | None = None) -> None:
        self._chip = chip
        self.cs = cs if cs is not None else EmulatedPin()
        self._lock = threading.Lock()
        self._detached = False
        self._closed = False

    def detach(self) -> None:
        """Pull the cable: every byte reads 0xFF and writes go nowhere."""
        self._detached = True

    def attach(self) -> None:
        """Plug it back in."""
        self._detached = False

    def try_lock(self) -> bool:
        """Take the bus lock without waiting."""
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        """Release the bus lock."""
        if self._lock.locked():
            self._lock.release()

    def configure(
        self, *, baudrate: int = 100000, polarity: int = 0, phase: int = 0, bits: int = 8
    ) -> None:
        """Accept the clock settings (the model has no clock)."""
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def write(self, buffer: bytes | bytearray, *, start: int = 0, end: int | None = None) -> None:
        """One exchange of which the host keeps nothing."""
        self._exchange(bytes(memoryview(buffer)[start:end]))

    def readinto(
        self, buffer: bytearray, *, start: int = 0, end: int | None = None, write_value: int = 0
    ) -> None:
        """Clock bytes in while sending `write_value`."""
        stop = len(buffer) if end is None else end
        buffer[start:stop] = self._exchange(bytes((write_value,)) * (stop - start))

    def write_readinto(
        self,
        buffer_out: bytes | bytearray,
        buffer_in: bytearray,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        """Send and receive in one exchange, byte for byte."""
        answer = self._exchange(bytes(memoryview(buffer_out)[out_start:out_end]))
        stop = len(buffer_in) if in_end is None else in_end
        buffer_in[in_start:stop] = answer[: stop - in_start]

    def deinit(self) -> None:
        """Release the bus; later exchanges fail."""
        self._closed = True

    def _exchange(self, sent: bytes) -> bytes:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if not self._lock.locked():
            raise RuntimeError("Function requires lock")
        if self._detached:
            return b"\xff" * len(sent)
        if self.cs.value or not sent:
            return bytes(len(sent))  # not selected: the chip keeps MISO quiet
        operation = reverse_bits(sent[0])
        answer = bytes(len(sent))
        if operation == SPI_DATA_WRITE:
            self._chip.host_write(bytes(reverse_bits(b) for b in sent[1:]))
        elif operation == SPI_STATUS_READ:
            status = STATUS_READY if self._chip.response_ready() else 0
            answer = bytes((0, reverse_bits(status))) + bytes(max(0, len(sent) - 2))
        elif operation == SPI_DATA_READ:
            frame = self._chip.take_frame() or b""
            body = frame[: len(sent) - 1]
            data = body + bytes(len(sent) - 1 - len(body))
            answer = bytes((0,)) + bytes(reverse_bits(b) for b in data)
        return answer[: len(sent)]


# -- UART ----------------------------------------------------------------------------------

_WAKE_BYTES = frozenset((0x55, 0x00))


class EmulatedUart:
    """Stands in for the `serial.Serial` port a PN532 on the Pi's UART is opened with.

    The chip's frames appear on the line as soon as they exist. A read returns what
    is there at once (as a read whose timeout ran out does); `unplug` makes every
    call fail the way a vanished USB-serial adapter does.
    """

    def __init__(self, chip: Pn532Emulator) -> None:
        self._chip = chip
        self._line = bytearray()
        self._lock = threading.Lock()
        self._unplugged = False
        self.timeout = 0.1

    def unplug(self) -> None:
        """Pull the adapter: reads and writes raise OSError."""
        self._unplugged = True

    def replug(self) -> None:
        """Plug it back in."""
        self._unplugged = False

    @property
    def in_waiting(self) -> int:
        """Bytes waiting on the line."""
        with self._lock:
            self._check()
            self._pull()
            return len(self._line)

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes of what is on the line."""
        with self._lock:
            self._check()
            self._pull()
            data = bytes(self._line[:size])
            del self._line[:size]
            return data

    def write(self, data: bytes | bytearray) -> int:
        """Send bytes to the chip: a wake-up preamble, or one frame."""
        with self._lock:
            self._check()
            sent = bytes(data)
            # The driver wakes the chip with 0x55 0x55 and zeros before anything else.
            if sent and not set(sent) <= _WAKE_BYTES:
                self._chip.host_write(sent)
            return len(sent)

    def reset_input_buffer(self) -> None:
        """Drop what is waiting on the line."""
        with self._lock:
            self._check()
            self._line.clear()

    def close(self) -> None:
        """Close the port."""
        self._unplugged = True

    def _check(self) -> None:
        if self._unplugged:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def _pull(self) -> None:
        while (frame := self._chip.take_frame()) is not None:
            self._line += frame
