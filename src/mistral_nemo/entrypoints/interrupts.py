"""Ctrl-C at an interactive prompt always interrupts it.

Python's readline prints the prompt, then waits for a key in select(); it raises KeyboardInterrupt
only when a signal interrupts that select(). A Ctrl-C (SIGINT) that lands in between, or that the
kernel hands to one of torch's or numba's worker threads, only sets Python's flag: the prompt
ignores it until the next key. So an interactive command blocks SIGINT before any thread exists
(every later thread inherits the mask) and one small thread takes each SIGINT with sigwait, then
signals the main thread alone, again every 50 ms until the main thread has raised
KeyboardInterrupt for it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

_WAKE_MAIN = signal.SIGUSR2
_RETRY_S = 0.05


def route_ctrl_c_to_main_thread() -> None:
    """Call first thing in an interactive command, before importing torch; a no-op where stdin is
    not a terminal, SIGINT is ignored (a background job), or the platform lacks POSIX thread signals."""
    if not (sys.stdin.isatty() and hasattr(signal, "pthread_sigmask")):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    pending = threading.Event()  # a Ctrl-C the main thread has not raised yet

    def raise_once(signum: int, frame: object) -> None:
        if pending.is_set():  # the retries after the first that landed are no-ops
            pending.clear()
            raise KeyboardInterrupt

    signal.signal(_WAKE_MAIN, raise_once)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            pending.set()
            while pending.is_set() and threading.main_thread().is_alive():
                signal.pthread_kill(main_thread, _WAKE_MAIN)
                time.sleep(_RETRY_S)

    threading.Thread(target=forward, name="ctrl-c", daemon=True).start()
