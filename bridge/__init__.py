"""ZeroMQ protocol, bridge service and the emulated env client (cyberdial.bridge)."""
