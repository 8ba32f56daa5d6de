"""Scenarios and game model, the simulator and the emulator (imported as cyberdial.range)."""
