"""A reward function as the judge (`judge.kind=function`).

The function follows TRL's reward-function convention (GRPOTrainer's `reward_funcs`):
`NAME(prompts: list[str], completions: list[str], **kwargs) -> list[float]`, one reward per completion.
`judge.function` names it as `FILE.py:NAME` or `module:NAME`. Comparing two answers to the same
prompt, the first is chosen with probability sigmoid((r_first - r_second) / judge.temperature)
(Bradley–Terry on the rewards): no position bias, and the same pair cache, designs, estimates, pairs
and win rates as a model judge. Each answer's reward is computed once per (prompt, text).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np

from pipeline.config import UserError


class RewardFunctionError(UserError):
    """A reward function that cannot be found, loaded or used; printed as one line."""


def function_file(spec: str) -> Path:
    """The file that defines `FILE.py:NAME` or `module:NAME` (its content enters fingerprints and cache keys)."""
    target = spec.rsplit(":", 1)[0]
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardFunctionError(f"judge.function: file {target!r} does not exist")
        return path
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        raise RewardFunctionError(f"judge.function: module {target!r} cannot be found ({e})") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise RewardFunctionError(f"judge.function: module {target!r} cannot be found (give FILE.py:NAME for a file)")
    return Path(found.origin)


@functools.lru_cache(maxsize=64)
def function_sha(spec: str) -> str:
    return hashlib.sha256(function_file(spec).read_bytes()).hexdigest()[:16]


def load_reward_function(spec: str):
    """The callable named by `spec`; one clear line when the file does not import or the name is missing."""
    target, name = spec.rsplit(":", 1)
    path = function_file(spec)
    try:
        if target.endswith(".py"):
            loader = importlib.util.spec_from_file_location(f"spmcmc_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as e:  # any error in the user's file is theirs to fix
        raise RewardFunctionError(f"judge.function: importing {target!r} failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardFunctionError(f"judge.function: {target!r} has no {name!r}; its callables are {public}")
    if not callable(fn):
        raise RewardFunctionError(f"judge.function: {spec!r} is not callable")
    return fn


def rewards(fn, spec: str, prompts: list[str], completions: list[str]) -> np.ndarray:
    """fn's rewards, checked: one finite number per completion."""
    try:
        out = fn(prompts=list(prompts), completions=list(completions))
    except Exception as e:  # the user's function failed: say where, in one line
        raise RewardFunctionError(f"judge.function {spec} raised {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else '(no message)'}") from None
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise RewardFunctionError(f"judge.function {spec} must return a list of numbers, got "
                                  f"{type(out).__name__}: {str(out)[:80]}") from None
    if len(values) != len(completions):
        raise RewardFunctionError(f"judge.function {spec} returned {len(values)} rewards for {len(completions)} "
                                  "completions; it must return one per completion")
    bad = [k for k, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise RewardFunctionError(f"judge.function {spec} returned {values[bad[0]]} for completion {bad[0]} "
                                  f"({completions[bad[0]][:60]!r}); rewards must be finite numbers")
    return np.array(values)


class RewardJudge:
    """P(first chosen) = sigmoid((r_first - r_second) / temperature) over candidates `texts` answering `queries`
    (`prompt_of[i]`: the query candidate i answers), the rewards computed on first use, in one call per batch."""

    def __init__(self, spec: str, temperature: float, queries: list[str], texts: list[str], prompt_of: list[int]):
        self.spec, self.temperature = spec, temperature
        self.fn = load_reward_function(spec)
        self.queries, self.texts, self.prompt_of = queries, texts, prompt_of
        self.reward = np.full(len(texts), np.nan)
        self.last_mass = np.empty(0)  # the judge's "label mass": 1, a function always answers

    def _ensure(self, ids) -> None:
        todo = [i for i in dict.fromkeys(int(i) for i in ids) if np.isnan(self.reward[i])]
        if todo:
            self.reward[todo] = rewards(self.fn, self.spec, [self.queries[self.prompt_of[i]] for i in todo],
                                        [self.texts[i] for i in todo])

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        first, second = np.asarray(first, dtype=int), np.asarray(second, dtype=int)
        self._ensure(np.concatenate([first, second]))
        self.last_mass = np.ones(len(first))
        return 1.0 / (1.0 + np.exp(-(self.reward[first] - self.reward[second]) / self.temperature))
