"""SIGTERM, SIGINT and SIGHUP (a closed terminal; not under ``nohup``, which ignores it) stop a run at the end of its
current step (the prior's evaluation, a warm-up step or an iteration), after a checkpoint: the same command resumes.

A second signal while stopping is handled as before (SIGINT: ``KeyboardInterrupt``), so a stuck run can still be
interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANGUP = getattr(signal, "SIGHUP", None)  # none on Windows


class StopRequest:
    """``received``: the name of the first stop signal since ``listening()`` began (``None``: none)."""

    def __init__(self):
        self.received: str | None = None

    @contextlib.contextmanager
    def listening(self):
        """Catch the stop signals for the block (main thread only; elsewhere nothing is caught)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        if HANGUP is not None and signal.getsignal(HANGUP) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays so
            previous[HANGUP] = signal.getsignal(HANGUP)

        def note(signum, frame):
            self.received = signal.Signals(signum).name
            for sig, handler in previous.items():  # a second signal acts as it did before
                signal.signal(sig, handler)

        for sig in previous:
            signal.signal(sig, note)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Stopped(SystemExit):
    """The run stopped on a signal after saving its checkpoint; exits with status 1 and the message."""
