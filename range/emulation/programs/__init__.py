"""Programs that run for the emulated range: services, sensors, actuators, green, red, implant.

Each is a plain Python module started with `python -m`; one process per subnet
(not per host) opens its sockets inside each host's network namespace.
"""
