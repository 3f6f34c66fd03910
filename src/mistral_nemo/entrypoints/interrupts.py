"""Ctrl-C reaches the main thread, whichever threads torch, numba or tokenizers start.

A Ctrl-C typed in a terminal is a SIGINT to the whole process, and the kernel hands it to any thread
that does not block it. When a worker thread gets it, Python only sets a flag: the main thread,
asleep in readline's wait for a key, does not wake, and the prompt ignores the Ctrl-C until the
next key. So an interactive command blocks SIGINT before any thread exists (every later thread
inherits the mask), a small thread takes each SIGINT with sigwait, and it wakes the main thread with
a signal aimed at that thread alone, whose handler raises KeyboardInterrupt there.
"""

from __future__ import annotations

import signal
import sys
import threading

_WAKE_MAIN = signal.SIGUSR2


def route_ctrl_c_to_main_thread() -> None:
    """Call first thing in an interactive command, before importing torch; a no-op where stdin is
    not a terminal, SIGINT is ignored (a background job), or the platform lacks POSIX thread signals."""
    if not (sys.stdin.isatty() and hasattr(signal, "pthread_sigmask")):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.signal(_WAKE_MAIN, _raise_keyboard_interrupt)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            signal.pthread_kill(main_thread, _WAKE_MAIN)

    threading.Thread(target=forward, name="ctrl-c", daemon=True).start()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
