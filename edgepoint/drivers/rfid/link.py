"""How the PN532 hangs off the Pi: I2C, SPI or UART (real or emulated), and its IRQ line."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from adafruit_bus_device.spi_device import SPIDevice
from adafruit_pn532.i2c import PN532_I2C
from adafruit_pn532.spi import PN532_SPI
from adafruit_pn532.uart import PN532_UART

from edgepoint.drivers.rfid.bus import (
    SPI_STATUS_READ,
    EmulatedI2CBus,
    EmulatedSpiBus,
    EmulatedUart,
    reverse_bits,
)
from edgepoint.drivers.rfid.emulator import I2C_ADDRESS, STATUS_READY, Pn532Emulator
from edgepoint.errors import DeviceError


class Interface(StrEnum):
    """The PN532 breakout's interface, as set by its mode jumpers or switches."""

    I2C = "i2c"
    SPI = "spi"
    UART = "uart"


class Pn532Driver(Protocol):
    """The part of `adafruit_pn532.PN532` the reader uses."""

    @property
    def firmware_version(self) -> tuple[int, ...]: ...

    def listen_for_passive_target(self, card_baud: int = ..., timeout: float = ...) -> bool: ...

    def process_response(
        self, command: int, response_length: int = ..., timeout: float = ...
    ) -> Any: ...


class Pn532Link(Protocol):
    """One way to reach the chip: builds the adafruit driver and peeks at the chip's status."""

    @property
    def interface(self) -> Interface: ...

    def describe(self) -> str:
        """Where the chip is, for logs and `edgepoint doctor`."""
        ...

    def open_driver(self) -> Pn532Driver:
        """Build the adafruit driver: wakes, configures and identifies the chip (blocks)."""
        ...

    def response_ready(self) -> bool:
        """One cheap look: does the chip hold an answer? (blocks for one bus transfer)."""
        ...


class I2cLink:
    """The chip on an I2C bus (the breakout's default)."""

    interface = Interface.I2C

    def __init__(
        self, bus: Any, *, address: int = I2C_ADDRESS, reset: Any = None, req: Any = None
    ) -> None:
        self.bus = bus
        self._address = address
        self._reset = reset
        self._req = req
        self._status = bytearray(1)

    def describe(self) -> str:
        return f"I2C at {self._address:#04x}"

    def open_driver(self) -> Pn532Driver:
        driver: Pn532Driver = PN532_I2C(
            self.bus, address=self._address, reset=self._reset, req=self._req
        )
        return driver

    def response_ready(self) -> bool:
        # A one-byte read is the status. Straight on the bus (busio's own API) rather
        # than through an I2CDevice: this runs ten times a second all day, and every
        # layer of Python costs after each sleep (see scripts/idle_cpu.py).
        bus = self.bus
        while not bus.try_lock():
            time.sleep(0)
        try:
            bus.readfrom_into(self._address, self._status)
        finally:
            bus.unlock()
        return self._status[0] == STATUS_READY


class SpiLink:
    """The chip on the SPI bus, selected by a GPIO used as chip select."""

    interface = Interface.SPI

    def __init__(self, spi: Any, cs: Any, *, reset: Any = None, cs_name: str = "") -> None:
        self._spi = spi
        self._cs = cs
        self._reset = reset
        self._cs_name = cs_name
        self._status = SPIDevice(spi, cs)

    def describe(self) -> str:
        return f"SPI, chip select {self._cs_name}" if self._cs_name else "SPI"

    def open_driver(self) -> Pn532Driver:
        driver: Pn532Driver = PN532_SPI(self._spi, self._cs, reset=self._reset)
        return driver

    def response_ready(self) -> bool:
        out = bytes((reverse_bits(SPI_STATUS_READ), 0x00))
        answer = bytearray(2)
        with self._status as spi:
            spi.write_readinto(out, answer)
        return reverse_bits(answer[1]) == STATUS_READY


class UartLink:
    """The chip on a serial port (HSU mode), e.g. the Pi's /dev/serial0."""

    interface = Interface.UART

    def __init__(self, uart: Any, *, reset: Any = None, port_name: str = "") -> None:
        self._uart = uart
        self._reset = reset
        self._port_name = port_name

    def describe(self) -> str:
        return f"UART {self._port_name}".rstrip()

    def open_driver(self) -> Pn532Driver:
        driver: Pn532Driver = PN532_UART(self._uart, reset=self._reset)
        return driver

    def response_ready(self) -> bool:
        return bool(self._uart.in_waiting)

    def close(self) -> None:
        """Close the serial port (its adapter may come back as a new device)."""
        with contextlib.suppress(Exception):
            self._uart.close()


class DeferredLink:
    """A hardware link opened when the reader first connects, and again after a failure.

    A bus that cannot be opened (I2C not enabled, the USB-serial adapter of a UART
    reader unplugged) is then a reader fault that the reader keeps retrying, not a
    daemon that cannot start.
    """

    def __init__(self, interface: Interface, open_link: Callable[[], Pn532Link]) -> None:
        self._interface = interface
        self._open_link = open_link
        self._link: Pn532Link | None = None

    @property
    def interface(self) -> Interface:
        return self._interface

    def describe(self) -> str:
        return self._link.describe() if self._link is not None else self._interface.value.upper()

    def open_driver(self) -> Pn532Driver:
        if self._link is None:
            self._link = self._open_link()
        try:
            return self._link.open_driver()
        except Exception:
            # Open the bus afresh next time: a re-enumerated adapter is a new device.
            link, self._link = self._link, None
            if isinstance(link, UartLink):
                link.close()
            raise

    def response_ready(self) -> bool:
        if self._link is None:
            raise DeviceError("the PN532's bus is not open")
        return self._link.response_ready()


def emulated_link(chip: Pn532Emulator, interface: Interface = Interface.I2C) -> Pn532Link:
    """The emulated chip behind an emulated bus of the given kind (the real driver runs on it)."""
    if interface is Interface.SPI:
        spi = EmulatedSpiBus(chip)
        return SpiLink(spi, spi.cs, cs_name="(emulated)")
    if interface is Interface.UART:
        return UartLink(EmulatedUart(chip), port_name="(emulated)")
    return I2cLink(EmulatedI2CBus.with_pn532(chip))


def hardware_link(
    interface: Interface,
    *,
    spi_cs_pin: int = 5,
    uart_port: str = "/dev/serial0",
    uart_baudrate: int = 115200,
    reset_pin: int | None = None,
    req_pin: int | None = None,
) -> Pn532Link:
    """The Pi's own bus for `interface`; pins are BCM GPIO numbers.

    Blinka detects the board when `board` is imported and fails off a Pi, so the
    hardware modules are imported here and only when asked for.
    """
    try:
        board = importlib.import_module("board")
        digitalio = importlib.import_module("digitalio")

        def gpio(number: int | None) -> Any:
            return None if number is None else digitalio.DigitalInOut(getattr(board, f"D{number}"))

        reset = gpio(reset_pin)
        if interface is Interface.UART:
            serial = importlib.import_module("serial")
            uart = serial.Serial(uart_port, uart_baudrate, timeout=0.1)
            return UartLink(uart, reset=reset, port_name=uart_port)
        busio = importlib.import_module("busio")
        if interface is Interface.SPI:
            spi = busio.SPI(board.SCK, board.MOSI, board.MISO)
            return SpiLink(spi, gpio(spi_cs_pin), reset=reset, cs_name=f"GPIO{spi_cs_pin}")
        return I2cLink(busio.I2C(board.SCL, board.SDA), reset=reset, req=gpio(req_pin))
    except (ImportError, AttributeError, OSError, RuntimeError, ValueError) as err:
        raise DeviceError(f"cannot open the PN532's {interface.value.upper()} bus: {err}") from err


class IrqLine:
    """The PN532's IRQ output (P70_IRQ, low while an answer waits) on a GPIO, via gpiozero."""

    def __init__(self, pin: int, pin_factory: Any = None) -> None:
        # Imported here: gpiozero picks a pin library when a device is made.
        from gpiozero import DigitalInputDevice

        try:
            # pull_up: the line is active low, and the pull-up keeps an unwired
            # or unplugged line inactive instead of floating.
            self._device = DigitalInputDevice(pin, pull_up=True, pin_factory=pin_factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad pin
            raise DeviceError(f"cannot use GPIO{pin} for the PN532 IRQ: {err}") from err
        self.pin = pin

    @classmethod
    def emulated(cls, chip: Pn532Emulator, pin: int) -> IrqLine:
        """A line on gpiozero's MockFactory pins, driven by the emulated chip."""
        from gpiozero.pins.mock import MockFactory

        factory = MockFactory()
        line = cls(pin, pin_factory=factory)
        mock_pin = factory.pin(pin)

        def drive(asserted: bool) -> None:
            if asserted:
                mock_pin.drive_low()
            else:
                mock_pin.drive_high()

        chip.connect_irq(drive)
        return line

    def asserted(self) -> bool:
        """Whether the chip signals an answer now."""
        return bool(self._device.is_active)

    def on_assert(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` (from gpiozero's thread) each time the line becomes active."""
        self._device.when_activated = callback

    def close(self) -> None:
        """Release the GPIO."""
        self._device.close()
