"""Local control API over a Unix socket, used by the CLI and the TUI."""
