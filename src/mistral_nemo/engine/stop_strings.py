"""Stop strings that are never shown, even when the model writes them across several tokens."""

from __future__ import annotations


class StopStringFilter:
    """Holds back the end of the text while it could still be the start of a stop string.

    Feed one token's text at a time: generation ends the moment a stop string is complete, so
    the text is cut at the earliest stop string present after that token (a longer stop string
    that started earlier but would only complete later never gets the chance).
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = stops
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def add(self, text: str) -> str:
        """Take new text; return what is safe to show. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        hits = [(i, stop) for stop in self._stops if (i := self._pending.find(stop)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        """End of generation without a stop string: what was held back is ordinary text."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best
