"""Test tools shared across the suite: a fault-injecting TCP proxy and TLS certificates."""
