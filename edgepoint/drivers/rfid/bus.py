"""An I2C bus object with the busio.I2C surface, wired to emulated devices instead of /dev/i2c-1."""

from __future__ import annotations

import errno
import os
import threading
from types import TracebackType
from typing import Protocol

from edgepoint.drivers.rfid.emulator import I2C_ADDRESS, Pn532Emulator

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
