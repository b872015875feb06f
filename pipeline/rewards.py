"""Example reward functions for `judge.kind=function`, in TRL's convention:
`NAME(prompts: list[str], completions: list[str], **kwargs) -> list[float]`.

They plant a preference that is known and strong, so that the loop can be tested end to end:

    python pipeline/run.py recipe=joke_topics judge.kind=function judge.function=pipeline.rewards:exclamations

Write your own the same way in any file and name it as `judge.function=path/to/file.py:NAME`.
"""

from __future__ import annotations

import re


def exclamations(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Enthusiasm: the number of '!' in the answer, up to 3 (SmolLM2-135M ends about 8% of its jokes with one)."""
    return [float(min(c.count("!"), 3)) for c in completions]


def mentions_topic(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """1 when the answer names the prompt's last word (its topic: "... about cats." -> cat), else 0."""
    out = []
    for p, c in zip(prompts, completions):
        words = re.findall(r"[a-z]+", p.lower())
        topic = words[-1].rstrip("s") if words else ""
        out.append(1.0 if topic and topic in c.lower() else 0.0)
    return out


def length(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Longer is better: characters / 100 (a pure length judge, for tests of the confound controls)."""
    return [len(c) / 100 for c in completions]
