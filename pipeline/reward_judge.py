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
        if path.is_dir():
            raise RewardFunctionError(f"judge.function: {target!r} is a directory, not a file; give FILE.py:NAME")
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
    """The content of the function's file and of the local modules it imports, transitively: a helper edited next
    to the reward file changes the rewards, so it must change the fingerprint too."""
    digest = hashlib.sha256()
    root = function_file(spec)
    for path in [root, *local_imports(root)]:
        digest.update(str(path.name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def local_imports(path: Path, seen: set | None = None) -> list[Path]:
    """The modules `path` imports that are files beside it (`import helper`, `from . import helper`, `from pkg.mod
    import x` with pkg/ beside it), and theirs, in a stable order. Installed packages and the standard library are
    versioned by their installers and left out; so is anything imported dynamically (importlib, __import__)."""
    import ast

    seen = seen if seen is not None else {path.resolve()}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []  # loading it says what is wrong
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] + [f"{node.module}.{a.name}" if node.module else a.name for a in node.names]
                 if isinstance(node, ast.ImportFrom) else [])
        base = path.parent
        if isinstance(node, ast.ImportFrom) and node.level > 1:
            base = path.parents[node.level - 1] if len(path.parents) >= node.level else path.parent
        for name in filter(None, names):
            parts = name.split(".")
            for candidate in [c for k in range(1, len(parts) + 1)  # a package's __init__ runs on import too
                              for c in (base.joinpath(*parts[:k]).with_suffix(".py"), base.joinpath(*parts[:k], "__init__.py"))]:
                resolved = candidate.resolve()
                if candidate.is_file() and resolved not in seen:
                    seen.add(resolved)
                    found += [candidate, *local_imports(candidate, seen)]
    return found


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
    if isinstance(out, (str, bytes, dict)) or hasattr(out, "keys"):  # iterating these gives keys or characters
        raise RewardFunctionError(f"judge.function {spec} must return a list of numbers, one per completion, got "
                                  f"{type(out).__name__}: {str(out)[:80]}")
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
