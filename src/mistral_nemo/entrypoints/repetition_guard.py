"""Noticing an answer that has fallen into a loop ("la femme, la femme, la femme, ..."), so chat can end it.

A small model at a low temperature can repeat one phrase until max_tokens runs out. The guard
watches the generated token ids and fires when their tail is one block of 1..MAX_PERIOD tokens
repeated MIN_REPEATS times or more, over at least MIN_SPAN tokens: long enough that lists, tables
and code with honest repetition pass (`--no-repetition-guard` turns it off).
"""

from __future__ import annotations

MAX_PERIOD = 64  # longest repeated block looked for, in tokens
MIN_REPEATS = 4  # copies of the block in a row
MIN_SPAN = 48  # tokens the repetition must cover at least


class RepetitionGuard:
    def __init__(
        self, max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN
    ):
        self.max_period, self.min_repeats, self.min_span = max_period, min_repeats, min_span
        self.tokens: list[int] = []
        self.fired = False  # the output ended in a loop (and was stopped there)

    def reset(self) -> None:
        self.tokens, self.fired = [], False

    def add(self, token_ids: list[int]) -> bool:
        """Take newly generated ids; True once the output ends in a loop."""
        self.tokens.extend(token_ids)
        self.fired = self.fired or self.looping()
        return self.fired

    def looping(self) -> bool:
        tokens = self.tokens
        for period in range(1, self.max_period + 1):
            span = max(period * self.min_repeats, self.min_span)
            if span > len(tokens):
                break
            # The tail is periodic with this period when each token equals the one a period earlier;
            # walk back from the end, so most periods fail at the first comparison.
            end = len(tokens)
            if all(tokens[i] == tokens[i - period] for i in range(end - 1, end - span + period - 1, -1)):
                return True
        return False
