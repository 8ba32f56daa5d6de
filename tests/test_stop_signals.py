"""`stop_signals_interrupt`: the one place drill, validate, calibrate and watch turn
SIGTERM (and SIGINT, even inherited ignored) into KeyboardInterrupt, and put back what
was there. Real signals, sent to this process by its own PID, in the main thread."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from cyberdial.commands.common import stop_signals_interrupt

WAIT_S = 10.0  # a signal to ourselves arrives at once; this only bounds a failing test


def _custom(signum: int, frame: FrameType | None) -> None:
    raise AssertionError(f"the handler from before got signal {signum}")


@pytest.fixture
def handlers_before() -> Iterator[None]:
    """A SIGTERM handler of our own and SIGINT ignored (as a job started with `cmd &`)."""
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _custom)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


def _send_and_wait(signum: signal.Signals) -> None:
    # Never send SIGTERM to the test runner without a handler of ours in place.
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _custom)
    os.kill(os.getpid(), signum)
    time.sleep(WAIT_S)  # the handler's exception ends the sleep


def test_sigterm_inside_raises_keyboard_interrupt_and_handlers_come_back(
    handlers_before: None,
) -> None:
    with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        started = time.monotonic()
        _send_and_wait(signal.SIGTERM)
    assert time.monotonic() - started < WAIT_S / 2
    assert signal.getsignal(signal.SIGTERM) is _custom
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigint_interrupts_even_where_it_was_ignored(handlers_before: None) -> None:
    with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
        _send_and_wait(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is _custom


def test_handlers_come_back_after_a_normal_exit_and_an_error(handlers_before: None) -> None:
    with stop_signals_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not _custom
    assert signal.getsignal(signal.SIGTERM) is _custom
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    with pytest.raises(ValueError, match="boom"), stop_signals_interrupt():
        raise ValueError("boom")
    assert signal.getsignal(signal.SIGTERM) is _custom
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_without_sigint_only_sigterm_is_taken(handlers_before: None) -> None:
    # `watch` keeps the SIGINT handler it was started with.
    with stop_signals_interrupt(sigint=False):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing may happen
        time.sleep(0.2)
        with pytest.raises(KeyboardInterrupt):
            _send_and_wait(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is _custom
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
