"""How the pipeline writes a figure that may be missing: report tables, printed lines, plot titles."""

from __future__ import annotations


def number(v, spec: str = ".3f", missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def signed(v) -> str:
    """A correlation in a column of them: the sign always shown, a missing one as wide as a number."""
    return number(v, "+.3f", "  n/a")
