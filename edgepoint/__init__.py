"""edgepoint: an OCPP 1.6J charge-point daemon for a Raspberry Pi EV-charging kiosk."""

__version__ = "0.1.0"
