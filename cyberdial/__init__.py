"""cyberdial: an emulation-backed cyber range for multi-agent autonomous cyber defence."""

__version__ = "0.1.0"
