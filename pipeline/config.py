"""Every setting of the pipeline, once, with its default: the one page of knobs.

`load_config(argv)` reads `recipe=NAME` (recipes/NAME.yaml holds only what differs from these
defaults), then `key.sub=value` overrides, and validates everything against these dataclasses
(OmegaConf structured configs). Bad input raises `ConfigError` with one line that says what to fix.
Fields marked `semantic=False` do not change a stage's result and stay out of its fingerprint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import regex

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
STAGES = ("sample_space", "spmcmc", "preferences", "finetune", "evaluate")
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
MIN_RATED_ITEMS = 10  # fewer human-rated items make every correlation meaningless
# TRL 1.x DPO loss types (DPOConfig.loss_type's help text; tests/test_config.py checks the list against it)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
EVALUATORS = ("spmcmc", "direct_rating", "p_true", "logprob", "self_certainty", "random")
TEMPLATE_FIELDS = ("query", "first", "second", "label_first", "label_second", "question")


class UserError(Exception):
    """A problem the user can fix (bad setting, missing file, unusable model): printed as one line,
    with a non-zero exit and no traceback."""


class ConfigError(UserError):
    """A mistake in the command line or a recipe."""


def setting(default, help: str, semantic: bool = True, factory=None, reads: str | None = None):
    """A field with its help text. `semantic=False`: no effect on results (kept out of fingerprints).
    `reads="file"|"model"|"function"`: the value names something on disk (a file, model weights, the file
    defining a reward function) whose content enters the fingerprint."""
    meta = {"help": help, "semantic": semantic, "reads": reads}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


class Section:
    """Checks shared by every settings section: no NaN or infinite numbers, the section's own `validate()` (the
    most specific message), then no negative counts or seeds."""
    SECTION = ""

    def __post_init__(self):
        numbers = [(f"{self.SECTION}.{f.name}", getattr(self, f.name)) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), (int, float)) and not isinstance(getattr(self, f.name), bool)]
        for key, value in numbers:  # first: a NaN fails every comparison, and validate() would name the wrong one
            _require(math.isfinite(value), key, f"must be a finite number, got {value}")
        self.validate()
        for key, value in numbers:
            _require(value >= 0, key, f"must be >= 0, got {value}")

    def validate(self) -> None:
        pass


def _nonempty_list(values: list, key: str, example: str) -> None:
    _require(len(values) > 0, key, f"must not be empty, e.g. {key}={example}")
    twice = [v for k, v in enumerate(values) if v in values[:k]]
    _require(not twice, key, f"lists {twice[0] if twice else ''!r} twice")


@dataclass
class ModelConfig(Section):
    SECTION = "model"
    name_or_path: str = setting(
        EMBEDDED_MODEL,
        "local model folder, a hub id already in the local cache, or embedded:smollm2-135m-instruct "
        "/ embedded:tiny-random; never downloaded",
        reads="model",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "auto = float32 on CPU, bfloat16 on GPUs that support it")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto = cuda when available")
    cpu_threads: int = setting(0, "torch threads on CPU (0 = all cores, shared between local processes)",
                               semantic=False)
    trust_remote_code: bool = setting(False, "run code shipped with the model (off unless you trust it)")
    cache_dir: str = setting("", "where converted embedded models live (default ~/.cache/spmcmc-pipeline)",
                             semantic=False)


DEFAULT_PREAMBLES = [
    r"^(sure|okay|ok|of course|absolutely|certainly|alright)\b[!.,]*\s*",
    r"^here(?:'s| is) (?:a|an|one|another|my)\b[^:\n]{0,60}[:!.]\s*",
    r"^(?:a|an|one) (?:classic |quick |short |funny )?(?:joke|one)[^:\n]{0,40}:\s*",
]


@dataclass
class SampleSpaceConfig(Section):
    SECTION = "sample_space"
    query: Optional[str] = setting(None, "one request the model answers many times (e.g. 'Tell me a joke.'); "
                                         "or use sample_space.prompts")
    prompts: Any = setting(None, "a prompt set instead of one query: a CSV/JSONL/parquet file with a `prompt` "
                                 "column (optional `id`), or an inline list [a,b]", reads="file")
    system_prompt: Optional[str] = setting(None, "system message for generation; null = template default")
    num_samples: int = setting(64, "random answers to generate before dedup")
    chunk_size: int = setting(32, "answers per persisted chunk (resume granularity)")
    batch_size: int = setting(32, "answers generated together")
    temperature: float = setting(1.0, "sampling temperature")
    top_p: float = setting(1.0, "nucleus sampling mass")
    max_new_tokens: int = setting(64, "longest answer, in tokens")
    drop_truncated: bool = setting(True, "drop answers that did not end within max_new_tokens")
    preamble_patterns: list[str] = setting(None, "regexes stripped from the start of answers",
                                           factory=lambda: list(DEFAULT_PREAMBLES))
    min_chars: int = setting(10, "drop answers shorter than this after normalisation")
    max_chars: int = setting(600, "drop answers longer than this after normalisation")
    extra_path: Optional[str] = setting(None, "CSV/JSONL/parquet with a `text` column added to the pool (jester = "
                                              "the bundled Jester jokes)", reads="file")
    only_extra: bool = setting(False, "use only the extra pool (no generation)")
    seed: int = setting(0, "sampling seed")

    def validate(self):
        _require(self.query is None or self.prompts is None, "sample_space.query/prompts",  # neither: Config checks
                 "both are set; keep one (e.g. add sample_space.query=null when the recipe sets a query)")
        if isinstance(self.prompts, list):
            _nonempty_list(self.prompts, "sample_space.prompts", "[Tell me a joke about cats.,Tell me a joke about dogs.]")
            _require(all(isinstance(p, str) and p.strip() for p in self.prompts), "sample_space.prompts",
                     "every prompt must be non-empty text")
        _require(self.chunk_size > 0 and self.batch_size > 0, "sample_space.chunk_size/batch_size", "must be > 0")
        _require(self.temperature > 0, "sample_space.temperature", "must be > 0")
        _require(0 < self.top_p <= 1, "sample_space.top_p", "must be in (0, 1]")
        _require(self.max_new_tokens > 0, "sample_space.max_new_tokens", "must be > 0")
        _require(self.min_chars <= self.max_chars, "sample_space.min_chars",
                 f"{self.min_chars} is above sample_space.max_chars ({self.max_chars})")
        _require(not self.only_extra or bool(self.extra_path), "sample_space.only_extra",
                 "needs sample_space.extra_path")
        for pattern in self.preamble_patterns:
            try:
                regex.compile(pattern, regex.V0)  # the engine that runs it (pipeline/user_patterns.py)
            except regex.error as e:
                raise ConfigError(f"sample_space.preamble_patterns: {pattern!r} is not a valid regex ({e})") from None


# The question comes first and only a short reminder follows the second candidate: everything
# before the second candidate is shared by many comparisons and computed once, so a short tail is
# what makes the judge fast (docs/PERFORMANCE.md); SmolLM2 also followed this format more often.
DEFAULT_JUDGE_TEMPLATE = (
    "{question} Answer with a single letter: {label_first} or {label_second}.\n\n"
    "Request: {query}\n\n"
    "Response {label_first}: {first}\n\n"
    "Response {label_second}: {second}\n\n"
    "{label_first} or {label_second}?"
)


@dataclass
class JudgeConfig(Section):
    SECTION = "judge"
    kind: Literal["model", "function"] = setting(
        "model", "model: a language model's binary choice (judge.model, or the policy itself); function: a reward "
        "function (judge.function), P(first chosen) = sigmoid((r_first - r_second) / judge.temperature)")
    model: Optional[str] = setting(None, "with kind=model: another local model as a fixed judge (a folder, a cached hub "
                                         "id or embedded:...; loaded with the model.* device settings); null = the "
                                         "policy being measured", reads="model")
    function: Optional[str] = setting(None, "with kind=function: FILE.py:NAME or module:NAME, a reward function in TRL's "
                                            "convention NAME(prompts, completions, **kwargs) -> list[float] (examples: "
                                            "pipeline.rewards)", reads="function")
    template: str = setting(DEFAULT_JUDGE_TEMPLATE,
                            "pairwise prompt; fields {query} {first} {second} {label_first} {label_second} {question}")
    question: str = setting("Which response is better?", "the question the judge answers")
    system_prompt: Optional[str] = setting(None, "system message for the judge; null = template default")
    labels: list[str] = setting(None, "the two answer labels; each must be one token", factory=lambda: ["A", "B"])
    temperature: float = setting(1.0, "divides the two label logits (1.0 = the model's own choice probability)")
    calibration: Literal["none", "mean_logit"] = setting(
        "none", "mean_logit: subtract the mean label-logit difference (the position bias) before the softmax "
        "(needs a design computed up front: spmcmc.mode exact or sparse)")
    batch_size: int = setting(16, "comparisons per forward pass", semantic=False)
    prefix_cache: bool = setting(True, "reuse the key/value cache of shared prompt prefixes", semantic=False)
    prefix_cache_mb: int = setting(1024, "with prefix_cache: memory kept between judge calls for the key/values of "
                                         "instruction + first answer (the active design's rounds and the chains ask for "
                                         "the same first answers again); least recently used first out; 0 = none",
                                   semantic=False)

    def validate(self):
        _require(self.kind != "function" or bool(self.function), "judge.function",
                 "judge.kind=function needs judge.function=FILE.py:NAME or module:NAME")
        _require(self.kind == "function" or not self.function, "judge.function",
                 "is set but judge.kind=model; add judge.kind=function")
        _require(self.kind == "model" or not self.model, "judge.model", "is set but judge.kind=function; pick one judge")
        if self.function:
            target, colon, name = self.function.rpartition(":")
            _require(bool(colon) and bool(target) and name.isidentifier(), "judge.function",
                     f"{self.function!r} must be FILE.py:NAME or module:NAME, e.g. pipeline.rewards:exclamations")
        _require(len(self.labels) == 2 and self.labels[0] != self.labels[1] and all(x.strip() for x in self.labels),
                 "judge.labels", "needs two different, non-empty labels, e.g. judge.labels=[A,B]")
        _require(self.temperature > 0, "judge.temperature", "must be > 0")
        _require(self.batch_size > 0, "judge.batch_size", "must be > 0")
        check_template(self.template, "judge.template")


def check_template(template: str, key: str) -> None:
    """Only the known {fields}, and {first} and {second} exactly once (the prompt is split around them)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{key}: {e}; write a literal brace as {{{{ or }}}}") from None
    for name in names:
        _require(name in TEMPLATE_FIELDS, key, f"unknown field {{{name}}}; the fields are "
                 + " ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS))
    for name in ("first", "second"):
        _require(names.count(name) == 1, key, f"must contain {{{name}}} exactly once (found {names.count(name)})")


@dataclass
class SpmcmcConfig(Section):
    SECTION = "spmcmc"
    num_chains: int = setting(4, "independent chains from dispersed starts")
    iterations: int = setting(1250, "Metropolis-Hastings steps per chain (4 x 1250 = the paper's 5000)")
    burn_in: int = setting(100, "steps per chain dropped before counting visits")
    thin: int = setting(1, "count every thin-th step after burn-in")
    order: Literal["random", "both", "fixed"] = setting(
        "random", "presentation order: random | both (debiased, 2 passes) | fixed (current first)")
    mode: Literal["auto", "exact", "sparse", "active", "chains"] = setting(
        "auto", "design: exact (all N(N-1) comparisons) | sparse (random graph, both orders) | active (chosen "
        "in rounds where the estimate is still open, one budget for all prompts; pipeline/active.py) | chains "
        "(the paper's MH chains) | auto = exact if N(N-1) <= budget, else active if 4N <= budget, else chains")
    budget: int = setting(5000, "judge comparisons the design may use, per prompt (auto picks the mode by it; "
                                "active: the run's budget is this times the prompts, shared)")
    precision: float = setting(0.03, "active: a prompt stops when the expected total-variation error of its "
                                     "estimate (from the exact, every-comparison answer) is at most this: an absolute "
                                     "TV, loose for a judge whose whole preference is a TV of ~0.02 from uniform")
    round_size: int = setting(32, "active: comparisons chosen per round (16 pairs, both orders); the design "
                                  "depends on it")
    flat_w: Optional[float] = setting(None, "active: a prompt stops as flat when no pair's order-averaged choice W "
                                            "can reach this (upper 95% bound, every pair): no DPO pair there would pass "
                                            "the confidence filter (null = preferences.min_confidence, that filter)")
    degree: int = setting(0, "sparse: others each candidate is compared with (0 = as many as the budget allows)")
    chains: Literal["auto", "true", "false"] = setting(
        "auto", "run the paper's chains too: auto = when they cost no new comparisons (exact) or are the design")
    bootstrap: int = setting(100, "bootstrap resamples (over compared pairs) for standard errors")
    consistency_splits: int = setting(10, "random split halves averaged for the consistency figure")
    min_consistency: float = setting(0.5, "warn when the preference consistency is below this")
    bt_alpha: float = setting(0.01, "regularisation of the Bradley-Terry fit")
    diagnostics_top_k: int = setting(10, "R-hat/ESS on indicator series of this many most-visited candidates")
    checkpoint_every: int = setting(50, "steps between chain checkpoints", semantic=False)
    design_chunk: int = setting(256, "design comparisons per persisted batch (resume granularity)", semantic=False)
    seed: int = setting(0, "chain seed")

    def validate(self):
        _require(self.num_chains >= 1, "spmcmc.num_chains", "must be >= 1")
        _require(self.iterations >= 1, "spmcmc.iterations", "must be >= 1")
        _require(self.budget >= 1, "spmcmc.budget", "must be >= 1 (judge comparisons per prompt)")
        _require(0 <= self.burn_in < self.iterations, "spmcmc.burn_in",
                 f"{self.burn_in} must be >= 0 and < spmcmc.iterations ({self.iterations})")
        _require(self.thin >= 1, "spmcmc.thin", "must be >= 1")
        _require(self.checkpoint_every >= 1 and self.design_chunk >= 1, "spmcmc.checkpoint_every/design_chunk",
                 "must be >= 1")
        _require(self.diagnostics_top_k >= 1, "spmcmc.diagnostics_top_k", "must be >= 1")
        _require(self.degree == 0 or self.degree >= 2, "spmcmc.degree", "must be 0 (from the budget) or >= 2 (connected)")
        _require(self.bootstrap >= 20, "spmcmc.bootstrap", "must be >= 20")
        _require(self.consistency_splits >= 1, "spmcmc.consistency_splits", "must be >= 1")
        _require(self.min_consistency <= 1, "spmcmc.min_consistency", "must be <= 1")
        _require(self.precision > 0, "spmcmc.precision", "must be > 0")
        _require(self.round_size >= 2, "spmcmc.round_size", "must be >= 2 (one pair in both orders)")
        _require(self.flat_w is None or 0.5 <= self.flat_w < 1, "spmcmc.flat_w", "must be in [0.5, 1)")


CONFOUND_FEATURES = ("length", "tokens", "logprob", "mean_logprob", "count")  # pipeline/confounds.py measures these


@dataclass
class ConfoundsConfig(Section):
    SECTION = "confounds"
    formats: list[str] = setting(None, "format features as name=regex (1 where an answer matches), measured next to "
                                       "length, tokens, logprob, mean_logprob and count, e.g. "
                                       "confounds.formats='[\"question=[?]$\"]'",
                                 factory=list)
    control: list[str] = setting(None, "confounds the controlled score holds fixed (spmcmc's `controlled` column; "
                                       "preferences.control=true builds pairs from it); [] = no controlled score",
                                 factory=lambda: ["length", "logprob"])
    warn_r2: float = setting(0.5, "warn when the confounds explain at least this share (R^2) of the judge's "
                                  "preference strengths")

    def validate(self):
        names = list(CONFOUND_FEATURES)
        for item in self.formats:
            name, eq, pattern = item.partition("=")
            _require(bool(eq) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None, "confounds.formats",
                     f"{item!r} must be name=regex with a name of letters, digits and _, e.g. question=[?]$")
            _require(name not in names, "confounds.formats", f"the name {name!r} is used twice or is a built-in feature")
            try:
                regex.compile(pattern, regex.V0)
            except regex.error as e:
                raise ConfigError(f"confounds.formats: {pattern!r} is not a valid regex ({e})") from None
            names.append(name)
        twice = [v for k, v in enumerate(self.control) if v in self.control[:k]]
        _require(not twice, "confounds.control", f"lists {twice[0] if twice else ''!r} twice")
        for name in self.control:
            _require(name in names, "confounds.control", f"unknown confound {name!r}{_nearest(name, names)}; "
                     f"the confounds are {names}")
        _require(0 < self.warn_r2 <= 1, "confounds.warn_r2", "must be in (0, 1]")


@dataclass
class PreferencesConfig(Section):
    SECTION = "preferences"
    score: Literal["auto", "frequency", "rao_blackwell", "bt", "stationary", "sparse"] = setting(
        "auto", "which spMCMC estimate ranks candidates (auto = the spmcmc stage's best, its `score`)")
    min_confidence: float = setting(
        0.55, "keep a pair only if the model's own order-averaged choice of chosen over rejected is at least this")
    min_gap_z: float = setting(1.0, "keep a pair only if its strength gap is at least this many standard errors (from "
                                    "the GLM on the comparisons: how much the judge's readings disagree with each other; "
                                    "under control, on the half of the comparisons that did not rank the pair)")
    control: bool = setting(False, "build pairs from the controlled score (spmcmc's `controlled`: the preference left "
                                   "with confounds.control held fixed) instead of the raw score")
    alpha: float = setting(0.05, "with control: a prompt gives pairs only if its controlled preference passes the "
                                 "Wald test at this level, Holm-corrected across prompts")
    max_confound_gap: float = setting(0.0, "with control: keep only pairs whose controlled confounds differ by at most "
                                           "this many standard deviations (0 = no matching)")
    warn_share: float = setting(0.8, "warn when the chosen answer is the shorter, or the likelier, in at least this "
                                     "share of the kept pairs (or at most 1 - it)")
    budget: int = setting(2000, "judge comparisons allowed for pair confidence beyond those spmcmc computed")
    strategy: Literal["top_vs_bottom", "margin", "sampled"] = setting("top_vs_bottom", "how pairs are built")
    top_fraction: float = setting(0.25, "top_vs_bottom: share of candidates on each side")
    min_ratio: float = setting(2.0, "margin: keep pairs whose score ratio is at least this")
    max_pairs: int = setting(256, "most pairs in the train split")
    max_uses_per_candidate: int = setting(8, "most pairs any candidate appears in")
    split: Literal["auto", "prompt", "candidate"] = setting(
        "auto", "hold out whole prompts (prompt) or candidates within each prompt (candidate); auto = prompt "
        "when the run has several prompts")
    test_fraction: float = setting(0.2, "share of prompts (split=prompt) or candidates held out for the test split")
    sft_mode: Literal["top_k", "sampled"] = setting("top_k", "SFT targets: the top k, or drawn by score")
    sft_k: int = setting(8, "number of SFT targets")
    seed: int = setting(0, "seed for the split and sampling")

    def validate(self):
        _require(0 < self.top_fraction <= 0.5, "preferences.top_fraction", "must be in (0, 0.5]")
        _require(self.min_ratio >= 1, "preferences.min_ratio", "must be >= 1")
        _require(self.max_pairs >= 1 and self.max_uses_per_candidate >= 1 and self.sft_k >= 1,
                 "preferences.max_pairs/max_uses_per_candidate/sft_k", "must be >= 1")
        _require(0 <= self.test_fraction < 1, "preferences.test_fraction", "must be in [0, 1)")
        _require(0.5 <= self.min_confidence < 1, "preferences.min_confidence",
                 "must be in [0.5, 1): below 0.5 the model itself prefers the rejected answer")
        _require(not self.control or self.score == "auto", "preferences.control",
                 f"ranks pairs by the controlled score, so preferences.score={self.score} would be ignored; keep "
                 "preferences.score=auto")
        _require(0.5 < self.warn_share <= 1, "preferences.warn_share", "must be in (0.5, 1]")
        _require(0 < self.alpha < 1, "preferences.alpha", "must be in (0, 1)")
        _require(self.control or self.max_confound_gap == 0, "preferences.max_confound_gap",
                 "matches pairs on the controlled confounds: it needs preferences.control=true")


@dataclass
class FinetuneConfig(Section):
    SECTION = "finetune"
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha")
    lora_dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] = setting(None, "modules that get adapters",
                                        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    beta: float = setting(0.1, "DPO beta")
    loss_type: list[str] = setting(None, "TRL DPO loss types, e.g. [sigmoid] or [sigmoid,sft]",
                                   factory=lambda: ["sigmoid"])
    learning_rate: float = setting(2e-4, "adapter learning rate (docs/PERFORMANCE.md: DPO dose-response)")
    num_epochs: float = setting(2.0, "passes over the train pairs")
    batch_size: int = setting(8, "pairs per device per step")
    gradient_accumulation_steps: int = setting(1, "steps accumulated per update")
    max_length: int = setting(256, "longest prompt+answer in tokens")
    sft_first: bool = setting(False, "an SFT warm-up on the sft split before DPO")
    sft_epochs: float = setting(1.0, "epochs of the SFT warm-up")
    quantization: Literal["none", "4bit"] = setting("none", "4bit = QLoRA (bitsandbytes NF4, CUDA only)")
    merge: bool = setting(False, "also export the base model with the adapter merged in")
    save_steps: int = setting(10, "checkpoint every this many optimiser steps", semantic=False)
    eval_steps: int = setting(8, "DPO loss and reward accuracy on the held-out pairs every this many optimiser steps "
                                 "(TRL eval_dataset; 0 = off)")
    eval_pairs: int = setting(256, "held-out pairs those curves read (a seeded sample when there are more): each "
                                   "evaluation costs the same however many prompts the run has")
    seed: int = setting(0, "training seed")

    def validate(self):
        _require(self.lora_r >= 1 and self.lora_alpha >= 1, "finetune.lora_r/lora_alpha", "must be >= 1")
        _require(self.lora_dropout < 1, "finetune.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _nonempty_list(self.target_modules, "finetune.target_modules", "[q_proj,v_proj]")
        _nonempty_list(self.loss_type, "finetune.loss_type", "[sigmoid]")
        for loss in self.loss_type:
            _require(loss in DPO_LOSS_TYPES, "finetune.loss_type",
                     f"unknown DPO loss {loss!r}{_nearest(loss, DPO_LOSS_TYPES)}; TRL has {list(DPO_LOSS_TYPES)}")
        _require(self.max_length >= 2, "finetune.max_length", "must be >= 2 tokens")
        _require(self.beta > 0, "finetune.beta", "must be > 0")
        _require(self.learning_rate > 0, "finetune.learning_rate", "must be > 0")
        _require(self.num_epochs > 0, "finetune.num_epochs", "must be > 0")
        _require(self.eval_pairs >= 1, "finetune.eval_pairs", "must be >= 1 (finetune.eval_steps=0 turns the curves off)")
        _require(self.batch_size >= 1 and self.gradient_accumulation_steps >= 1 and self.save_steps >= 1,
                 "finetune.batch_size/gradient_accumulation_steps/save_steps", "must be >= 1")


@dataclass
class EvaluateConfig(Section):
    SECTION = "evaluate"
    query: Optional[str] = setting(None, "the request the human-rated items answer (null = sample_space.query; "
                                         "needed when the run has a prompt set)")
    winrate_samples: int = setting(12, "answers per policy per evaluation prompt (held out, or the one query) for the "
                                       "tuned policy's win rate and its yardstick (0 = off); the best-of-8 ceiling "
                                       "needs at least 9 (8 in the contest, one outside it to face)")
    human_ratings: str = setting("jester", "jester (bundled), or a CSV/JSONL/parquet of text+rating or item+rater+rating",
                                 reads="file")
    max_items: int = setting(30, f"rated items used (0 = all, else >= {MIN_RATED_ITEMS}); chosen deterministically")
    max_chars: int = setting(300, "skip rated items longer than this (0 = no limit)")
    rating_scale: Optional[list[float]] = setting(
        None, "[lowest, highest] possible rating: the parametric noise ceiling from vote counts reads it (null = the "
              "whole numbers around the observed means)")
    evaluators: list[str] = setting(
        None, ", ".join(EVALUATORS), factory=lambda: list(EVALUATORS))
    spmcmc_iterations: int = setting(300, "chain steps per chain for the spmcmc evaluator")
    rating_question: str = setting("How good is this response, from 1 (very bad) to 7 (excellent)?",
                                   "direct rating question (answered with a digit 1-7)")
    binary_question: str = setting("Is this a good response?", "the yes/no question of the p_true evaluator")
    top_k: int = setting(5, "k for precision@k against the human top-k")
    bootstrap: int = setting(1000, "bootstrap resamples for confidence intervals")
    batch_size: int = setting(16, "items per forward pass", semantic=False)
    seed: int = setting(0, "seed for subsets, bootstrap and the random baseline")

    def validate(self):
        _nonempty_list(self.evaluators, "evaluate.evaluators", "[spmcmc,p_true]")
        for e in self.evaluators:
            _require(e in EVALUATORS, "evaluate.evaluators",
                     f"unknown evaluator {e!r}{_nearest(e, EVALUATORS)}; choose from {list(EVALUATORS)}")
        _require(self.max_items == 0 or self.max_items >= MIN_RATED_ITEMS, "evaluate.max_items",
                 f"must be 0 (all) or >= {MIN_RATED_ITEMS}: fewer items make every correlation meaningless")
        _require(self.rating_scale is None or (len(self.rating_scale) == 2
                                                and self.rating_scale[0] < self.rating_scale[1]),
                 "evaluate.rating_scale", "must be [lowest, highest] with lowest < highest, e.g. [1, 3]")
        _require(self.spmcmc_iterations >= 1, "evaluate.spmcmc_iterations", "must be >= 1")
        _require(self.bootstrap >= 100, "evaluate.bootstrap", "must be >= 100")
        _require(self.top_k >= 1, "evaluate.top_k", "must be >= 1")
        _require(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")


@dataclass
class RoundsConfig(Section):
    SECTION = "rounds"
    # None of these enters a fingerprint: round 1 is the same run whatever the count, and later rounds'
    # artifacts are fingerprinted by the artifacts they read (the previous policy, the judge, the pairs).
    count: int = setting(1, "self-improvement rounds: round r > 1 generates, judges and trains from round r-1's "
                            "policy", semantic=False)
    judge: Literal["policy", "base"] = setting(
        "policy", "the judge in round r > 1: the current policy (self-play) or the base model (a fixed judge: "
                  "the control for a drifting judge)", semantic=False)
    init: Literal["previous", "base"] = setting(
        "previous", "training in round r > 1: continue round r-1's adapter on the new pairs, or train a fresh "
                    "adapter on every round's pairs so far", semantic=False)
    min_diversity: float = setting(0.5, "warn when the policy's distinct answers per prompt, as a share of its "
                                        "samples, fall below this (collapse)", semantic=False)
    min_entropy: float = setting(0.8, "when a round yields no pair: below this entropy of the preference distribution "
                                      "(a share of the uniform's) the stop is put down to preferences sharpened to a "
                                      "point", semantic=False)

    def validate(self):
        _require(self.count >= 1, "rounds.count", "must be >= 1")
        _require(self.min_diversity <= 1, "rounds.min_diversity", "must be <= 1")
        _require(self.min_entropy <= 1, "rounds.min_entropy", "must be <= 1")


@dataclass
class WandbConfig(Section):
    SECTION = "wandb"
    mode: Literal["offline", "online", "disabled"] = setting(
        "offline", "offline stores runs under output_dir (upload later with `wandb sync`)")
    project: str = setting("spmcmc-pipeline", "W&B project")
    entity: Optional[str] = setting(None, "W&B entity (team or user)")

    def validate(self):
        _require(bool(self.project.strip()), "wandb.project", "must not be empty")


@dataclass
class Config:
    recipe: str = setting("???", "recipes/NAME.yaml to start from (or a path to a .yaml file)")
    output_dir: str = setting("", "where artifacts go (default runs/<recipe>)")
    stages: list[str] = setting(None, "stages to run, in pipeline order", factory=lambda: list(STAGES))
    model: ModelConfig = setting(None, "the model", factory=ModelConfig)
    sample_space: SampleSpaceConfig = setting(None, "stage 1", factory=SampleSpaceConfig)
    judge: JudgeConfig = setting(None, "the pairwise judge", factory=JudgeConfig)
    confounds: ConfoundsConfig = setting(None, "what the judge's preference tracks besides quality", factory=ConfoundsConfig)
    spmcmc: SpmcmcConfig = setting(None, "stage 2", factory=SpmcmcConfig)
    preferences: PreferencesConfig = setting(None, "stage 3", factory=PreferencesConfig)
    finetune: FinetuneConfig = setting(None, "stage 4", factory=FinetuneConfig)
    evaluate: EvaluateConfig = setting(None, "stage 5", factory=EvaluateConfig)
    rounds: RoundsConfig = setting(None, "self-improvement rounds", factory=RoundsConfig)
    wandb: WandbConfig = setting(None, "experiment tracking", factory=WandbConfig)

    def __post_init__(self):
        # here, not in SampleSpaceConfig: OmegaConf builds that section's defaults (neither set) for the schema
        _require(self.sample_space.query is not None or self.sample_space.prompts is not None, "sample_space.query",
                 "a value is required: sample_space.query=TEXT (one request) or sample_space.prompts=FILE or [a,b] "
                 "(a prompt set)")
        _require("evaluate" not in self.stages or self.evaluate.query is not None or self.sample_space.query is not None,
                 "evaluate.query", "the run answers a prompt set: say which request the human-rated items answer, "
                 "e.g. evaluate.query='Tell me a joke.'")
        _require(len(self.stages) > 0, "stages", f"must name at least one stage, e.g. stages=[sample_space]; "
                 f"stages are {list(STAGES)}")
        for s in self.stages:
            _require(s in STAGES, "stages", f"unknown stage {s!r}{_nearest(s, STAGES)}; stages are {list(STAGES)}")
        self.stages = [s for s in STAGES if s in self.stages]  # always pipeline order
        loop = [s for s in STAGES[:4] if s not in self.stages]  # round r > 1 starts from round r-1's finetune
        _require(self.rounds.count == 1 or not loop, "stages", f"rounds.count={self.rounds.count} runs "
                 f"{', '.join(STAGES[:4])} in every round; add {', '.join(loop)}: "
                 f"stages=[{','.join(s for s in STAGES if s in self.stages or s in loop)}]")
        _require(not ("evaluate" in self.stages and self.sample_space.prompts and self.preferences.test_fraction == 0
                      and self.preferences.split != "candidate"), "preferences.test_fraction",
                 "0 holds out no prompt of the prompt set, so the win rate (and its blind sheets) would be measured on "
                 "prompts the policy was trained on; hold some out (e.g. preferences.test_fraction=0.2) or leave "
                 "evaluate out of stages")
        _require(not (self.preferences.control and self.judge.kind == "model") or len(self.confounds.control) > 0,
                 "preferences.control", "true needs confounds to hold fixed, but confounds.control is empty; name "
                 "them (e.g. confounds.control=[length,logprob]) or set preferences.control=false")
        if self.spmcmc.flat_w is None:  # the filter the flat stop protects
            self.spmcmc.flat_w = self.preferences.min_confidence
        if not self.output_dir and self.recipe != "???":
            self.output_dir = str(Path("runs") / Path(self.recipe).stem)


def _nearest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def all_keys(cls=Config, prefix="") -> list[tuple[str, dataclasses.Field]]:
    """Every leaf setting as (dotted key, field), in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            out += all_keys(f.default_factory, key + ".")
        else:
            out.append((key, f))
    return out


def semantic_settings(section) -> dict:
    """The fields of a config section that change results (for fingerprints)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.metadata.get("semantic", True)}


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def help_text() -> str:
    lines = ["usage: pipeline/run.py recipe=NAME [key.sub=value ...]", "",
             f"recipes: {', '.join(available_recipes())}", "", "settings (default) — description:"]
    for key, f in all_keys():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {key} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def load_config(argv: list[str]) -> Config:
    """Schema defaults <- recipes/NAME.yaml <- key=value overrides; raises ConfigError.

    Values are typed by the schema, not by YAML: a text setting keeps exactly what was written
    (`Tell me a joke #1`, `1e3`, `a: b`, `{x}`), list items stay text (`[Yes,No]`), numbers and
    booleans are converted and checked by OmegaConf."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for a in argv:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value (see --help)")
    overrides = dict(a.split("=", 1) for a in argv)
    recipe = overrides.get("recipe")
    if not recipe:
        raise ConfigError(f"missing recipe=NAME; available: {', '.join(available_recipes())}")
    path = Path(recipe) if recipe.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {recipe!r}{_nearest(recipe, available_recipes())}; "
                          f"available: {', '.join(available_recipes())}")
    kinds = setting_kinds()
    from_recipe = _beside(_flatten(_read_recipe(path), kinds, f"recipe {path}"), path.parent)
    layers = [_typed(from_recipe, kinds, f"recipe {path}"), _typed(_known(overrides, kinds), kinds, "command line")]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), *(OmegaConf.create(_nest(v)) for v in layers))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        if "missing mandatory value" in msg:
            raise ConfigError(f"{key}: a value is required (set it in the recipe or as {key}=...)") from None
        raise ConfigError(f"{key + ': ' if key else ''}{msg}") from None


def setting_kinds() -> dict[str, str]:
    """How each dotted key's value is read: text, optional_text, list (of text) or scalar (number/bool)."""
    out = {}
    for key, f in all_keys():
        owner = _owner(key)
        tp = typing.get_type_hints(owner)[f.name]
        optional = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
        if optional:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp is Any:
            kind = "text_or_list"
        elif typing.get_origin(tp) is list:
            kind = "list"
        elif tp is str or typing.get_origin(tp) is Literal:
            kind = "text"
        else:
            kind = "scalar"
        out[key] = ("optional_" if optional else "") + kind
    return out


def _owner(key: str):
    cls = Config
    for part in key.split(".")[:-1]:
        cls = next(f.default_factory for f in dataclasses.fields(cls) if f.name == part)
    return cls


def _read_recipe(path: Path) -> dict:
    """The recipe as nested dicts of text (YAML's own typing is not applied: the schema types values)."""
    import yaml

    class Loader(yaml.BaseLoader):
        pass

    def mapping(loader, node):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                raise ConfigError(f"recipe {path}: duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        tree = yaml.load(path.read_text(), Loader=Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings (key: value), not a {type(tree).__name__}")
    return tree


def _beside(raw: dict[str, object], folder: Path) -> dict[str, object]:
    """A relative file name in a recipe names a file beside the recipe (recipes/prompts/x.csv is written
    `prompts/x.csv` in recipes/NAME.yaml), whatever the working directory."""
    files = {key for key, f in all_keys() if f.metadata.get("reads") == "file"}
    functions = {key for key, f in all_keys() if f.metadata.get("reads") == "function"}
    out = dict(raw)
    for key, value in raw.items():
        if key in files and isinstance(value, str) and value and not value.startswith("[") and \
                not Path(value).is_absolute() and (folder / value).is_file():
            out[key] = str((folder / value).resolve())
        if key in functions and isinstance(value, str) and ".py:" in value:  # FILE.py:NAME beside the recipe
            file, name = value.rsplit(":", 1)
            if not Path(file).is_absolute() and (folder / file).is_file():
                out[key] = f"{(folder / file).resolve()}:{name}"
    return out


def _sections(kinds: dict) -> set[str]:
    return {key.rsplit(".", k)[0] for key in kinds for k in range(1, key.count(".") + 1)}


def _flatten(tree: dict, kinds: dict, where: str, prefix: str = "") -> dict[str, object]:
    """Nested recipe -> {dotted key: raw value}; unknown keys get a suggestion among all dotted keys."""
    out = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if key in kinds:
            out[key] = value
        elif key in _sections(kinds):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} in {where} is a group of settings, not a value; see --help")
            out.update(_flatten(value, kinds, where, key + "."))
        else:
            raise ConfigError(f"unknown setting {key!r} in {where}{_nearest(key, list(kinds))}; see --help")
    return out


def _known(overrides: dict[str, str], kinds: dict) -> dict[str, str]:
    for key in overrides:
        if key in _sections(kinds):
            raise ConfigError(f"{key} is a group of settings; set one of its keys, e.g. "
                              f"{next(k for k in kinds if k.startswith(key + '.'))}=...")
        if key not in kinds:
            raise ConfigError(f"unknown setting {key!r} in command line{_nearest(key, list(kinds))}; see --help")
    return overrides


def _typed(raw: dict[str, object], kinds: dict, where: str) -> dict[str, object]:
    return {key: _value(key, value, kinds[key], where) for key, value in raw.items()}


def _escape(text: str) -> str:
    """Text OmegaConf gives back exactly as typed: it reads ${...} as an interpolation (${oc.env:KEY} would copy an
    environment variable into the config) and n backslashes before one as n/2 backslashes; written with 2n+1
    backslashes, n backslashes and a literal ${ come back."""
    return _INTERPOLATION.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)


_INTERPOLATION = re.compile(r"(\\*)\$\{")


def _value(key: str, value, kind: str, where: str):
    """One raw value (text from the command line, or what the YAML held) in the schema's type."""
    if kind.startswith("optional_") or kind == "text_or_list":
        if value is None or (isinstance(value, str) and value.strip() in ("", "null", "~")):
            return None
        kind = kind.removeprefix("optional_")
    if kind == "text_or_list":  # a file name, or an inline list in brackets
        kind = "list" if not isinstance(value, str) or value.strip().startswith("[") else "text"
    if kind == "list":
        items = _parse_list(key, value) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{key} ({where}): expected a list of text items, got {value!r}; write "
                              f"{key}=[a,b] and quote items holding commas, colons or brackets: {key}='[\"a, b\",c]'")
        return [_escape(v) for v in items]
    if not isinstance(value, str):
        raise ConfigError(f"{key} ({where}): expected a single value, got {value!r}")
    return _escape(value) if kind == "text" else value


def _parse_list(key: str, text: str):
    import yaml

    if not text.strip().startswith("["):
        raise ConfigError(f"{key}: a list is written in brackets, e.g. {key}=[{text}]")
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)  # every item stays text
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: could not read {text!r} as a list ({getattr(e, 'problem', e)}); quote items "
                          f"holding commas, colons or brackets, e.g. {key}='[\"a, b\",c]'") from None


def _nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
