"""Pseudo-terminal pair that stands in for the ESP32's USB-serial port in simulation."""

from __future__ import annotations

import os
import termios
import tty


def open_pty() -> tuple[int, str]:
    """Open a pty in raw mode; return the master fd (emulator side) and the slave's path."""
    master, slave = os.openpty()
    try:
        # Raw before anyone writes: with the default cooked mode the line
        # discipline would echo frames back into the master and turn "\n" into
        # "\r\n", and a frame written before the reader opens the port would
        # already be mangled.
        tty.setraw(slave, termios.TCSANOW)
        path = os.ttyname(slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        # Nobody keeps the slave open: the reader opens it by path like a real
        # device, and its close/reopen then behaves as it would on the Pi.
        os.close(slave)
    return master, path
