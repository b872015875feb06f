"""Stage 1 — sample space: the model's random answers to each prompt of the run's prompt set (one
query, or `sample_space.prompts`), normalised and deduplicated within each prompt.

Inputs:  optional `policy` (round r > 1: the previous round's finetune artifact, whose adapter generates)
         besides the model, the prompts and an optional external pool `extra_path`
Output:  id (global, 0..M-1, grouped by prompt), prompt_id, prompt, text, count (random samples before
         dedup), n_tokens (of the text alone), sum_logprob, mean_logprob (of the text as an answer to its
         prompt, end-of-turn included), is_greedy, source (sampled | greedy | external), text_sha
Resume:  `num_samples` answers per prompt are generated sample-major (one answer to every prompt, then
         the next), so that batches mix prompts, in chunks of `chunk_size`, each seeded from
         (seed, chunk index) and saved to _state/chunks/ when finished; a restarted run generates only
         the missing chunks. One prompt gives the same answers as the one-query run always did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NotRequired, TypedDict

from pipeline.artifacts import StageError, publish
from pipeline.config import Config, SampleSpaceConfig
from pipeline.generation import dedup_key, generate, normalise
from pipeline.hashing import text_sha
from pipeline.models import answer_scores, chat_prompt, load_model
from pipeline.prompts import Prompt, load_prompts
from pipeline.ratings import bundled_path
from pipeline.stages.finetune import adapter_of
from pipeline.tables import TableError, read_table
from pipeline.workdir import STATE_DIR, failpoint, log_work, write_json

NAME, VERSION = "sample_space", 4


class Summary(TypedDict):
    """summary.json: what later stages and the report read (the writer owns the shape; tests/test_contract.py checks
    it against real runs). Per prompt figures, counts and filters are in it too."""
    sampled: int
    unique: int
    n_prompts: int
    diversity: NotRequired[float]  # distinct answers among the policy's samples, as a share of them, mean over prompts;
    diversity_min: NotRequired[float]  # absent when nothing was sampled (sample_space.only_extra)
    per_prompt: list[dict]
SETTINGS = ("model", "sample_space")
OPTIONAL_INPUTS = ()
DISTRIBUTED = False


def build_candidates(sampled: list[dict], greedy: dict | None, extra: list[str], sc: SampleSpaceConfig):
    """Pure: raw answers -> unique candidates ordered by count (desc), then first appearance.

    `sampled`/`greedy` items are {"text", "finished"}. Returns (candidates, stats)."""
    stats = {"sampled": len(sampled), "truncated": 0, "too_short": 0, "too_long": 0, "unique": 0,
             "distinct_sampled": len({dedup_key(normalise(s["text"], sc.preamble_patterns)) for s in sampled})}
    pool: dict[str, dict] = {}

    def add(raw: str, finished: bool, source: str) -> None:
        if not finished and sc.drop_truncated and source != "greedy":
            stats["truncated"] += 1
            return
        # model outputs get preambles stripped; an external pool keeps its wording (whitespace aside)
        text = " ".join(raw.split()) if source == "external" else normalise(raw, sc.preamble_patterns)
        if len(text) < sc.min_chars or len(text) > sc.max_chars:
            stats["too_short" if len(text) < sc.min_chars else "too_long"] += 1
            return
        entry = pool.setdefault(dedup_key(text), {"text": text, "count": 0, "is_greedy": False,
                                                  "source": source, "order": len(pool)})
        entry["count"] += source == "sampled"
        entry["is_greedy"] |= source == "greedy"

    for item in sampled:
        add(item["text"], item["finished"], "sampled")
    if greedy is not None:
        add(greedy["text"], greedy["finished"], "greedy")
    for text in extra:
        add(text, True, "external")
    candidates = sorted(pool.values(), key=lambda e: (-e["count"], e["order"]))
    stats["unique"] = len(candidates)
    return candidates, stats


def _chunks(model, tok, prompts: list[str], sc: SampleSpaceConfig, workdir: Path) -> list[list[dict]]:
    """All sampled answers, per prompt, generating only chunks not already on disk. Row r of the
    sample-major order is answer r // P to prompt r % P."""
    from tqdm.auto import tqdm

    state = workdir / STATE_DIR / "chunks"
    state.mkdir(parents=True, exist_ok=True)
    total = sc.num_samples * len(prompts)
    rows = [prompts[r % len(prompts)] for r in range(total)]
    answers = []
    with tqdm(total=total, desc="[sample_space] generating", unit="answer") as bar:
        for c in range(math.ceil(total / sc.chunk_size)):
            path = state / f"chunk_{c:05d}.json"
            part = rows[c * sc.chunk_size:(c + 1) * sc.chunk_size]
            chunk = _saved_chunk(path, len(part))
            if chunk is None:
                chunk = generate(model, tok, part, sc, True, sc.seed * 1_000_003 + c)
                write_json(path, chunk)
                log_work(workdir, "generated_chunk", 1)
                failpoint("sample_space.chunk")
            answers += chunk
            bar.update(len(chunk))
    return [answers[k::len(prompts)] for k in range(len(prompts))]


def _saved_chunk(path: Path, n: int) -> list[dict] | None:
    """A finished chunk from disk, or None when it is missing or damaged (then it is generated again)."""
    if not path.is_file():
        return None
    try:
        chunk = json.loads(path.read_text())
        if len(chunk) == n and all(isinstance(a["text"], str) and isinstance(a["finished"], bool) for a in chunk):
            return chunk
    except (ValueError, TypeError, KeyError):
        pass
    print(f"[sample_space] {path.name} is damaged: generating it again", flush=True)
    return None


def _greedy(model, tok, prompts: list[str], sc: SampleSpaceConfig, workdir: Path) -> list[dict]:
    path = workdir / STATE_DIR / "chunks" / "greedy.json"
    saved = _saved_chunk(path, len(prompts))
    if saved is None:
        saved = generate(model, tok, prompts, sc, False, 0)
        write_json(path, saved)
    return saved


def _extra_pools(sc: SampleSpaceConfig, prompts: list[Prompt]) -> list[list[str]]:
    """The external pool's texts for each prompt (a `prompt` column assigns them when there are several)."""
    if not sc.extra_path:
        return [[] for _ in prompts]
    path = bundled_path("jester") / "jester_jokes.csv" if sc.extra_path == "jester" else sc.extra_path
    frame = read_table(path, ["text"], "sample_space.extra_path", text=("text", "prompt"))
    frame = frame[frame["text"].notna()]
    if len(prompts) == 1 and "prompt" not in frame.columns:
        return [[str(t) for t in frame["text"]]]
    if "prompt" not in frame.columns:
        raise TableError("sample_space.extra_path: with several prompts the pool needs a `prompt` column saying "
                         "which prompt each text answers")
    unknown = set(frame["prompt"]) - {p.text for p in prompts}
    if unknown:
        raise TableError(f"sample_space.extra_path: prompt {sorted(unknown)[0][:60]!r} is not in the run's prompt set")
    return [[str(t) for t in frame["text"][frame["prompt"] == p.text]] for p in prompts]


def _empty_message(sc: SampleSpaceConfig, stats: dict, n_extra: int) -> str:
    lengths = (f"{stats['too_short']} shorter than sample_space.min_chars={sc.min_chars}, {stats['too_long']} "
               f"longer than max_chars={sc.max_chars}")
    if sc.only_extra:
        return (f"empty sample space: the extra pool {sc.extra_path!r} has {n_extra} texts and none is usable "
                f"({lengths}); check the file's `text` column or sample_space.min_chars/max_chars")
    return (f"empty sample space: all {stats['sampled']} answers were dropped ({stats['truncated']} did not end within "
            f"max_new_tokens={sc.max_new_tokens}, {lengths}); raise sample_space.max_new_tokens, set "
            "sample_space.drop_truncated=false, loosen min_chars/max_chars, or check the query")


def run(cfg: Config, inputs: dict, workdir: Path):
    from datasets import Dataset

    sc = cfg.sample_space
    prompts = load_prompts(sc)
    extra = _extra_pools(sc, prompts)
    model, tok = load_model(cfg.model, adapter_of(inputs, "policy")[0])
    templated = [chat_prompt(tok, p.text, sc.system_prompt) for p in prompts]
    sampled, greedy = [[] for _ in prompts], [None] * len(prompts)
    if not sc.only_extra:
        sampled = _chunks(model, tok, templated, sc, workdir)
        greedy = _greedy(model, tok, templated, sc, workdir)
    columns = {c: [] for c in ("prompt_id", "prompt", "text", "count", "n_tokens", "sum_logprob", "mean_logprob",
                               "is_greedy", "source", "text_sha")}
    per_prompt = []
    for k, p in enumerate(prompts):
        candidates, stats = build_candidates(sampled[k], greedy[k], extra[k], sc)
        per_prompt.append({"prompt_id": p.id, "prompt": p.text, **stats,
                           "greedy": greedy[k]["text"] if greedy[k] else None})
        if not candidates:
            if len(prompts) == 1:
                raise StageError(_empty_message(sc, stats, len(extra[k])))
            continue
        texts = [c["text"] for c in candidates]
        scores = answer_scores(model, tok, templated[k], texts, desc="[sample_space] scoring")
        for c, text, score in zip(candidates, texts, scores):
            for key, value in (("prompt_id", p.id), ("prompt", p.text), ("text", text), ("count", c["count"]),
                               ("n_tokens", len(tok(text, add_special_tokens=False).input_ids)),
                               ("sum_logprob", score[0]), ("mean_logprob", score[1]), ("is_greedy", c["is_greedy"]),
                               ("source", c["source"]), ("text_sha", text_sha(text))):
                columns[key].append(value)
    if not columns["text"]:
        raise StageError(f"empty sample space: no prompt of {len(prompts)} kept an answer "
                         f"({_empty_message(sc, per_prompt[0], len(extra[0]))})")
    ds = Dataset.from_dict({"id": list(range(len(columns["text"]))), **columns})
    summary = _summary(per_prompt)
    publish(workdir, NAME, summary, _lines(summary))
    return ds


def _summary(per_prompt: list[dict]) -> dict:
    totals = {k: sum(p[k] for p in per_prompt) for k in ("sampled", "truncated", "too_short", "too_long", "unique")}
    shares = [p["distinct_sampled"] / p["sampled"] for p in per_prompt if p["sampled"]]
    if shares:  # distinct answers among the policy's samples, per prompt: collapse shows here first
        totals.update({"diversity": sum(shares) / len(shares), "diversity_min": min(shares)})
    if len(per_prompt) == 1:
        return {**totals, "greedy": per_prompt[0]["greedy"], "n_prompts": 1, "per_prompt": per_prompt}
    unique = [p["unique"] for p in per_prompt]
    return {**totals, "n_prompts": len(per_prompt), "unique_min": min(unique), "unique_max": max(unique),
            "prompts_without_candidates": sum(u == 0 for u in unique), "per_prompt": per_prompt}


def _lines(s: dict) -> list[str]:
    per_prompt = s["per_prompt"]
    lines = [f"{s['sampled']} sampled, {s['truncated']} truncated, {s['unique']} unique candidates"
             + (f" over {s['n_prompts']} prompts ({s['unique_min']}-{s['unique_max']} per prompt)"
                if s["n_prompts"] > 1 else "")]
    lines += [f"warning: prompt {p['prompt_id']} ({p['prompt'][:50]!r}) kept no answer: it is left out"
              for p in per_prompt if p["unique"] == 0 and len(per_prompt) > 1]
    return lines
