"""The emulated range: a scenario built as real network namespaces on Mininet.

`cyberdial.range.emulation.emulator.Range` builds and runs it; `plan` turns a
scenario into names and addresses (pure data); `state` records what a run made
so `teardown_run` can remove it by run id and PID, also after a crash; the
programs that run inside hosts live in `programs/`. Kept import-light on purpose:
host programs import from this package and must start fast.
"""
