"""Which signals stop a run at the end of its step (``rlar.runtime.stop_signals``), sent to this process."""

import os
import signal

import pytest

from rlar.runtime.stop_signals import StopRequest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (Windows)")


@pytest.fixture
def hangup_handler():
    """Restores SIGHUP's handler after the test."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_each_stop_signal_is_noted_and_the_handlers_are_restored(sig, hangup_handler):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's hangup, which would kill the run
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with StopRequest().listening() as stop:
        os.kill(os.getpid(), sig)
        assert stop.received == sig.name
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_hangup_stays_ignored(hangup_handler):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: the run goes on when its terminal closes
    with StopRequest().listening() as stop:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.received is None
