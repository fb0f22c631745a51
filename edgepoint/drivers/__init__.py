"""Device I/O behind small interfaces, each with a simulated twin at the lowest boundary."""
