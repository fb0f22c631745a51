"""Pure charging domain: events in, actions out; imports no I/O code."""
