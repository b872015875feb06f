"""Every setting of the pipeline, once, with its default: the one page of knobs.

`load_config(argv)` reads `recipe=NAME` (recipes/NAME.yaml holds only what differs from these
defaults), then `key.sub=value` overrides, and validates everything against these dataclasses
(OmegaConf structured configs). Bad input raises `ConfigError` with one line that says what to fix.
Fields marked `semantic=False` do not change a stage's result and stay out of its fingerprint.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
STAGES = ("sample_space", "spmcmc", "preferences", "finetune", "evaluate")
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class UserError(Exception):
    """A problem the user can fix (bad setting, missing file, unusable model): printed as one line,
    with a non-zero exit and no traceback."""


class ConfigError(UserError):
    """A mistake in the command line or a recipe."""


def setting(default, help: str, semantic: bool = True, factory=None):
    meta = {"help": help, "semantic": semantic}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


@dataclass
class ModelConfig:
    name_or_path: str = setting(
        EMBEDDED_MODEL,
        "local model folder, a hub id already in the local cache, or embedded:smollm2-135m-instruct "
        "/ embedded:tiny-random; never downloaded",
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
class SampleSpaceConfig:
    query: str = setting("???", "the request the model answers many times (e.g. 'Tell me a joke.')")
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
                                              "the bundled Jester jokes)")
    only_extra: bool = setting(False, "use only the extra pool (no generation)")
    seed: int = setting(0, "sampling seed")

    def __post_init__(self):
        _require(bool(self.query and self.query.strip()), "sample_space.query", "must not be empty")
        _require(self.num_samples >= 0, "sample_space.num_samples", "must be >= 0")
        _require(self.chunk_size > 0 and self.batch_size > 0, "sample_space.chunk_size/batch_size", "must be > 0")
        _require(self.temperature > 0, "sample_space.temperature", "must be > 0")
        _require(0 < self.top_p <= 1, "sample_space.top_p", "must be in (0, 1]")
        _require(self.max_new_tokens > 0, "sample_space.max_new_tokens", "must be > 0")
        _require(not self.only_extra or bool(self.extra_path), "sample_space.only_extra",
                 "needs sample_space.extra_path")


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
class JudgeConfig:
    template: str = setting(DEFAULT_JUDGE_TEMPLATE,
                            "pairwise prompt; fields {query} {first} {second} {label_first} {label_second} {question}")
    question: str = setting("Which response is better?", "the question the judge answers")
    system_prompt: Optional[str] = setting(None, "system message for the judge; null = template default")
    labels: list[str] = setting(None, "the two answer labels; each must be one token", factory=lambda: ["A", "B"])
    temperature: float = setting(1.0, "divides the two label logits (1.0 = the model's own choice probability)")
    batch_size: int = setting(16, "comparisons per forward pass", semantic=False)
    prefix_cache: bool = setting(True, "reuse the key/value cache of shared prompt prefixes", semantic=False)

    def __post_init__(self):
        _require(len(self.labels) == 2 and self.labels[0] != self.labels[1], "judge.labels",
                 "needs two different labels, e.g. [A,B]")
        _require(self.temperature > 0, "judge.temperature", "must be > 0")
        _require(self.batch_size > 0, "judge.batch_size", "must be > 0")
        for name in ("{first}", "{second}"):
            _require(name in self.template, "judge.template", f"must contain {name}")


@dataclass
class SpmcmcConfig:
    num_chains: int = setting(4, "independent chains from dispersed starts")
    iterations: int = setting(1250, "Metropolis-Hastings steps per chain (4 x 1250 = the paper's 5000)")
    burn_in: int = setting(100, "steps per chain dropped before counting visits")
    thin: int = setting(1, "count every thin-th step after burn-in")
    order: str = setting("random", "presentation order: random | both (debiased, 2 passes) | fixed (current first)")
    exact: str = setting("auto", "exact stationary distribution: auto | true | false")
    exact_budget: int = setting(2500, "auto computes the exact distribution when N(N-1) <= this")
    bt_alpha: float = setting(0.01, "regularisation of the Bradley-Terry fit")
    diagnostics_top_k: int = setting(10, "R-hat/ESS on indicator series of this many most-visited candidates")
    checkpoint_every: int = setting(50, "steps between chain checkpoints", semantic=False)
    seed: int = setting(0, "chain seed")

    def __post_init__(self):
        self.order, self.exact = str(self.order).lower(), str(self.exact).lower()
        _require(self.order in ("random", "both", "fixed"), "spmcmc.order", "must be random, both or fixed")
        _require(self.exact in ("auto", "true", "false"), "spmcmc.exact", "must be auto, true or false")
        _require(self.num_chains >= 1, "spmcmc.num_chains", "must be >= 1")
        _require(self.iterations >= 1, "spmcmc.iterations", "must be >= 1")
        _require(0 <= self.burn_in < self.iterations, "spmcmc.burn_in",
                 f"{self.burn_in} must be >= 0 and < spmcmc.iterations ({self.iterations})")
        _require(self.thin >= 1, "spmcmc.thin", "must be >= 1")
        _require(self.checkpoint_every >= 1, "spmcmc.checkpoint_every", "must be >= 1")


@dataclass
class PreferencesConfig:
    score: Literal["frequency", "stationary", "bt"] = setting("frequency", "which spMCMC estimate ranks candidates")
    strategy: Literal["top_vs_bottom", "margin", "sampled"] = setting("top_vs_bottom", "how pairs are built")
    top_fraction: float = setting(0.25, "top_vs_bottom: share of candidates on each side")
    min_ratio: float = setting(2.0, "margin: keep pairs whose score ratio is at least this")
    max_pairs: int = setting(256, "most pairs in the train split")
    max_uses_per_candidate: int = setting(8, "most pairs any candidate appears in")
    test_fraction: float = setting(0.2, "share of candidates held out for the test split")
    sft_mode: Literal["top_k", "sampled"] = setting("top_k", "SFT targets: the top k, or drawn by score")
    sft_k: int = setting(8, "number of SFT targets")
    seed: int = setting(0, "seed for the split and sampling")

    def __post_init__(self):
        _require(0 < self.top_fraction <= 0.5, "preferences.top_fraction", "must be in (0, 0.5]")
        _require(self.min_ratio >= 1, "preferences.min_ratio", "must be >= 1")
        _require(self.max_pairs >= 1 and self.max_uses_per_candidate >= 1 and self.sft_k >= 1,
                 "preferences.max_pairs/max_uses_per_candidate/sft_k", "must be >= 1")
        _require(0 <= self.test_fraction < 1, "preferences.test_fraction", "must be in [0, 1)")


@dataclass
class FinetuneConfig:
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha")
    lora_dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] = setting(None, "modules that get adapters",
                                        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    beta: float = setting(0.1, "DPO beta")
    loss_type: list[str] = setting(None, "TRL loss types, e.g. [sigmoid] or [sigmoid,sft]", factory=lambda: ["sigmoid"])
    learning_rate: float = setting(5e-5, "adapter learning rate")
    num_epochs: float = setting(2.0, "passes over the train pairs")
    batch_size: int = setting(8, "pairs per device per step")
    gradient_accumulation_steps: int = setting(1, "steps accumulated per update")
    max_length: int = setting(256, "longest prompt+answer in tokens")
    sft_first: bool = setting(False, "an SFT warm-up on the sft split before DPO")
    sft_epochs: float = setting(1.0, "epochs of the SFT warm-up")
    quantization: Literal["none", "4bit"] = setting("none", "4bit = QLoRA (bitsandbytes NF4, CUDA only)")
    merge: bool = setting(False, "also export the base model with the adapter merged in")
    save_steps: int = setting(10, "checkpoint every this many optimiser steps", semantic=False)
    seed: int = setting(0, "training seed")

    def __post_init__(self):
        _require(self.lora_r >= 1, "finetune.lora_r", "must be >= 1")
        _require(self.beta > 0, "finetune.beta", "must be > 0")
        _require(self.learning_rate > 0, "finetune.learning_rate", "must be > 0")
        _require(self.num_epochs > 0, "finetune.num_epochs", "must be > 0")
        _require(self.batch_size >= 1 and self.gradient_accumulation_steps >= 1 and self.save_steps >= 1,
                 "finetune.batch_size/gradient_accumulation_steps/save_steps", "must be >= 1")


@dataclass
class EvaluateConfig:
    human_ratings: str = setting("jester", "jester (bundled), or a CSV/JSONL/parquet of text+rating or item+rater+rating")
    max_items: int = setting(30, "rated items used (0 = all); chosen deterministically")
    max_chars: int = setting(300, "skip rated items longer than this (0 = no limit)")
    evaluators: list[str] = setting(
        None, "spmcmc, direct_rating, p_true, logprob, self_certainty, random",
        factory=lambda: ["spmcmc", "direct_rating", "p_true", "logprob", "self_certainty", "random"])
    spmcmc_iterations: int = setting(300, "chain steps per chain for the spmcmc evaluator")
    rating_question: str = setting("How good is this response, from 1 (very bad) to 7 (excellent)?",
                                   "direct rating question (answered with a digit 1-7)")
    binary_question: str = setting("Is this a good response?", "the yes/no question of the p_true evaluator")
    top_k: int = setting(5, "k for precision@k against the human top-k")
    bootstrap: int = setting(1000, "bootstrap resamples for confidence intervals")
    batch_size: int = setting(16, "items per forward pass", semantic=False)
    seed: int = setting(0, "seed for subsets, bootstrap and the random baseline")

    def __post_init__(self):
        known = {"spmcmc", "direct_rating", "p_true", "logprob", "self_certainty", "random"}
        for e in self.evaluators:
            _require(e in known, "evaluate.evaluators", f"unknown evaluator {e!r}; choose from {sorted(known)}")
        _require(self.max_items >= 0 and self.max_chars >= 0, "evaluate.max_items/max_chars", "must be >= 0")
        _require(self.bootstrap >= 100, "evaluate.bootstrap", "must be >= 100")
        _require(self.top_k >= 1, "evaluate.top_k", "must be >= 1")


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = setting(
        "offline", "offline stores runs under output_dir (upload later with `wandb sync`)")
    project: str = setting("spmcmc-pipeline", "W&B project")
    entity: Optional[str] = setting(None, "W&B entity (team or user)")


@dataclass
class Config:
    recipe: str = setting("???", "recipes/NAME.yaml to start from (or a path to a .yaml file)")
    output_dir: str = setting("", "where artifacts go (default runs/<recipe>)")
    stages: list[str] = setting(None, "stages to run, in pipeline order", factory=lambda: list(STAGES))
    model: ModelConfig = setting(None, "the model", factory=ModelConfig)
    sample_space: SampleSpaceConfig = setting(None, "stage 1", factory=SampleSpaceConfig)
    judge: JudgeConfig = setting(None, "the pairwise judge", factory=JudgeConfig)
    spmcmc: SpmcmcConfig = setting(None, "stage 2", factory=SpmcmcConfig)
    preferences: PreferencesConfig = setting(None, "stage 3", factory=PreferencesConfig)
    finetune: FinetuneConfig = setting(None, "stage 4", factory=FinetuneConfig)
    evaluate: EvaluateConfig = setting(None, "stage 5", factory=EvaluateConfig)
    wandb: WandbConfig = setting(None, "experiment tracking", factory=WandbConfig)

    def __post_init__(self):
        for s in self.stages:
            _require(s in STAGES, "stages", f"unknown stage {s!r}{_nearest(s, STAGES)}; stages are {list(STAGES)}")
        self.stages = [s for s in STAGES if s in self.stages]  # always pipeline order
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
    """Schema defaults <- recipes/NAME.yaml <- key=value overrides; raises ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for a in argv:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value (see --help)")
    overrides = dict(a.split("=", 1) for a in argv)
    recipe = overrides.get("recipe")
    if not recipe:
        raise ConfigError(f"missing recipe=NAME; available: {', '.join(available_recipes())}")
    path = Path(recipe) if recipe.endswith(".yaml") else RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {recipe!r}{_nearest(recipe, available_recipes())}; "
                          f"available: {', '.join(available_recipes())}")
    keys = [k for k, _ in all_keys()]
    try:
        schema = OmegaConf.structured(Config)
        recipe_cfg = OmegaConf.load(path)
        _check_keys(OmegaConf.to_container(recipe_cfg), keys, str(path))
        dotlist = OmegaConf.from_dotlist(argv)
        _check_keys(OmegaConf.to_container(dotlist), keys, "command line")
        merged = OmegaConf.merge(schema, recipe_cfg, dotlist)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        if "missing mandatory value" in msg:
            raise ConfigError(f"{key}: a value is required (set it in the recipe or as {key}=...)") from None
        if "Incompatible value 'None'" in msg:  # `key=` on the command line parses as null
            raise ConfigError(f"{key}: must not be empty") from None
        raise ConfigError(f"{key + ': ' if key else ''}{msg}") from None
    except ValueError as e:  # yaml syntax and similar
        raise ConfigError(str(e).splitlines()[0]) from None
    return cfg


def _check_keys(tree, keys: list[str], where: str) -> None:
    """Unknown keys, with a suggestion among all dotted keys (OmegaConf suggests only within a level)."""
    for full in _leaves(tree):
        if full not in keys:
            raise ConfigError(f"unknown setting {full!r} in {where}{_nearest(full, keys)}; see --help")


def _leaves(tree, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix[:-1]] if prefix else []
    return [k for key, value in tree.items() for k in _leaves(value, f"{prefix}{key}.")]


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
