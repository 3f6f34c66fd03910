"""`mistral-nemo chat` in a real terminal (a pseudo-terminal): line editing and history through
readline, and Ctrl-C at the prompt keeps the session (it says to use Ctrl-D or /bye)."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import console_script
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder


@pytest.fixture(scope="module")
def nemo_folder(tmp_path_factory) -> Path:
    return write_mistral_folder(random_reference_model(seed=3), tmp_path_factory.mktemp("Nemo-tty"))


class Terminal:
    """A child process on a pseudo-terminal: what a user types, what the screen shows."""

    def __init__(self, argv: list[str]) -> None:
        # pty.fork: the child starts a new session whose controlling terminal is the pty (setsid +
        # TIOCSCTTY), so a Ctrl-C typed there is SIGINT to the child's process group.
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command, with the terminal as stdin/stdout/stderr
            # As a terminal's shell does: SIGINT / SIGQUIT back to their defaults. A test runner started
            # without job control (CI runs it in the background of a non-interactive shell) ignores
            # them, the child would inherit SIG_IGN, and Python installs its KeyboardInterrupt handler
            # only where SIGINT is not ignored: the Ctrl-C would reach the child and do nothing.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            os.execv(argv[0], argv)
        self.screen = ""

    def read_until(self, text: str, since: int = 0, timeout: float = 120.0) -> str:
        """Wait until `text` shows on the screen after its first `since` characters."""
        deadline = time.monotonic() + timeout
        while text not in self.screen[since:]:
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen}")
            try:
                self.screen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:  # the child ended
                raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen}") from None
        return self.screen

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining the terminal so the child never blocks on output
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                pass
        os.kill(self.pid, 9)
        raise AssertionError(f"the chat did not exit; screen:\n{self.screen}")


def test_ctrl_c_at_the_prompt_keeps_the_session_and_arrows_recall_lines(nemo_folder: Path) -> None:
    term = Terminal([console_script("mistral-nemo"), "chat", str(nemo_folder), "--max-tokens", "2"])
    term.read_until(">>> ")
    term.type("/help\r")
    shown = len(term.screen)
    term.read_until(">>> ", since=shown)  # the help printed, the next prompt is waiting
    for _ in range(10):  # Ctrl-C the instant the prompt shows: before readline waits for a key
        shown = len(term.screen)
        term.type("\x03")
        screen = term.read_until("(Use Ctrl-D or /bye to exit.)", since=shown)
        term.read_until(">>> ", since=screen.index("(Use Ctrl-D", shown))
    term.type("/reset\r")
    term.read_until("(conversation cleared)")
    shown = len(term.screen)
    term.type("\x1b[A\x1b[A\r")  # up twice: readline recalls /help
    screen = term.read_until("/system TEXT", since=shown)  # /help ran again
    term.read_until(">>> ", since=screen.rindex("/system TEXT"))  # and the prompt is back
    shown = len(term.screen)
    term.type("hello\r")  # an answer: torch and numba start their worker threads
    screen = term.read_until("hello", since=shown)
    term.read_until(">>> ", since=screen.index("hello", shown))  # the answer ended
    shown = len(term.screen)
    term.type("\x03")  # a worker thread must not swallow this one
    term.read_until("(Use Ctrl-D or /bye to exit.)", since=shown)
    term.type("/bye\r")
    assert term.wait() == 0


def test_ctrl_c_at_the_mistral_chat_prompt_ends_it(nemo_folder: Path) -> None:
    """mistral-inference's mistral-chat ends on Ctrl-C at its prompt; ours too, after an answer."""
    term = Terminal([console_script("mistral-chat"), str(nemo_folder), "--instruct", "--max_tokens", "2"])
    term.read_until("Prompt: ")
    shown = len(term.screen)
    term.type("hello\r")
    screen = term.read_until("=====================", since=shown)
    term.read_until("Prompt: ", since=screen.index("=====================", shown))
    term.type("\x03")
    assert term.wait() == 0
