"""Regular expressions the user writes (confounds.formats, sample_space.preamble_patterns), run with a bound.

A pattern with nested quantifiers, like ^(a+)+$, backtracks for exponential time on a text that almost matches it:
one answer of 30 a's keeps a core busy for minutes with no output. Each match runs through the `regex` module with
a timeout; past it the run stops with one line that names the pattern and the setting.
"""

from __future__ import annotations

import regex

from pipeline.config import UserError

TIMEOUT_S = 1.0  # per match: a sane pattern takes microseconds on an answer of a few hundred characters


def compiled(pattern: str, flags: int = 0) -> regex.Pattern:
    """The pattern as the `regex` module reads it (V0: Python re's syntax); raises regex.error when invalid."""
    return regex.compile(pattern, flags | regex.V0)


def _timed_out(rx: regex.Pattern, key: str) -> UserError:
    return UserError(f"{key}: the pattern {rx.pattern!r} took over {TIMEOUT_S:g} s on one answer (catastrophic "
                     "backtracking, e.g. a nested quantifier like (a+)+); write it without nested repetition")


def search(rx: regex.Pattern, text: str, key: str) -> bool:
    try:
        return rx.search(text, timeout=TIMEOUT_S) is not None
    except TimeoutError:
        raise _timed_out(rx, key) from None


def sub_once(rx: regex.Pattern, text: str, key: str) -> str:
    try:
        return rx.sub("", text, count=1, timeout=TIMEOUT_S)
    except TimeoutError:
        raise _timed_out(rx, key) from None
