"""Ctrl-C (SIGINT), in one place: what a script does with it from its first statement,
what a writer that cannot be cancelled does, and what the training loop does.

- ``hold``: every script's first statement. From then on an interrupt, however early,
  ends the script with ``interrupted`` and status 130 (``errors.run`` reports it).
- ``deferred``: holds Ctrl-C back while a writer that cannot be cancelled (orbax writes
  from background threads, a scene's threads) finishes, so that the cleanup after it
  removes everything the writer wrote.
- ``StopAfterStep``: the training loop's: the first Ctrl-C stops after the current step,
  with a checkpoint; a second stops at once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading


class _Interrupts:
    """SIGINT in a script, from its first statement to its exit: remember that it came, and
    raise KeyboardInterrupt only where that is safe.

    - While the script starts (``hold`` until ``errors.run`` calls ``main``): imports,
      flag parsing and config files. A KeyboardInterrupt raised inside an import, or
      inside Python code that C++ called while a native module initialises, can leave a
      half-imported module, be swallowed, or abort the interpreter; so it is only noted,
      and ``errors.run`` reports it before ``main`` starts.
    - Inside a garbage-collection callback (JAX registers one) it would be printed and
      dropped, and inside an import (a lazy one, later) it can be swallowed: there the
      signal is sent again 20 ms later, until it lands elsewhere.
    - Raised inside Python code that C++ called (JAX's pytree code), it can come out as
      another error; ``errors.run`` still reports the interrupt, since ``seen`` is set.
    """

    def __init__(self):
        self.seen = False
        self.starting = True

    def __call__(self, signum, frame) -> None:
        self.seen = True
        if self.starting:
            return
        if _unsafe_to_raise(frame):
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self)


def _unsafe_to_raise(frame) -> bool:
    """Whether `frame` runs inside a gc callback or the import machinery."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code in callbacks or code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


# One per process: the handler from a script's first statement is the one `errors.run`
# uses.
SCRIPT = _Interrupts()


def hold() -> None:
    """Call first in a script, before its heavy imports: a Ctrl-C from then on, however
    early, ends the script with ``interrupted`` and status 130 (see ``_Interrupts``)."""
    SCRIPT.install()


class HeldInterrupts:
    """What ``deferred`` yields: ``check()`` raises KeyboardInterrupt now if
    SIGINT came while held, for a block that must fail before some final step (such as
    the rename of ``atomic_output``) rather than after it."""

    def __init__(self):
        self.received: list[int] = []

    def check(self) -> None:
        if self.received:
            self.received.clear()
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred(notice: str = "interrupt received: finishing the current write first"):
    """Hold SIGINT back until the block ends (or ``check()``), then raise KeyboardInterrupt.

    Only in the main thread (where Python delivers signals); elsewhere a no-op.
    """
    held = HeldInterrupts()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum, frame):
        if not held.received:
            print(notice, file=sys.stderr, flush=True)
        held.received.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)
    held.check()


class StopAfterStep:
    """Ctrl-C during training: the first sets ``requested``, and the loop stops after the
    current step with a checkpoint there, so that no progress is lost; a second stops at
    once. Only where `enabled`: single-process runs (in a multi-host run every process
    would have to agree on the step)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt: stopping after this step with a checkpoint (Ctrl-C again stops now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
