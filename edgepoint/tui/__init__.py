"""The technician's terminal UI (`edgepoint tui`): a Textual client of the control socket only."""
