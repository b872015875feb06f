"""Stage 1 — sample space: the model's random answers to one query, normalised and deduplicated.

Inputs:  none (the model, `sample_space.query`, optionally an external pool `extra_path`)
Output:  id, text, count (random samples before dedup), sum_logprob, mean_logprob (of the text as an
         answer to the query, end-of-turn included), is_greedy, source (sampled | greedy | external), text_sha
Resume:  answers are generated in chunks of `chunk_size`, each seeded from (seed, chunk index) and
         saved to _state/chunks/ when finished; a restarted run generates only the missing chunks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from pipeline import tracking
from pipeline.artifacts import STATE_DIR, StageError, failpoint, log_work, write_json
from pipeline.config import Config, SampleSpaceConfig
from pipeline.judge import text_sha
from pipeline.models import answer_scores, chat_prompt, load_model
from pipeline.ratings import JESTER_DIR
from pipeline.tables import read_table

NAME, VERSION = "sample_space", 1
SETTINGS = ("model", "sample_space")
QUOTES = "\"'“”‘’"


def normalise(text: str, patterns: list[str]) -> str:
    """Collapse whitespace, strip preambles ("Sure! Here's a joke:") and surrounding quotes."""
    compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    t = " ".join(text.split())
    while True:  # preambles nest ("Sure! Here's one:"), so strip until nothing changes
        before = t
        for p in compiled:
            t = p.sub("", t, count=1).strip()
        inner = t[1:-1]
        if len(t) >= 2 and t[0] in QUOTES and t[-1] in QUOTES and not any(q in inner for q in QUOTES):
            t = inner.strip()
        if t == before:
            return t


def dedup_key(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def build_candidates(sampled: list[dict], greedy: dict | None, extra: list[str], sc: SampleSpaceConfig):
    """Pure: raw answers -> unique candidates ordered by count (desc), then first appearance.

    `sampled`/`greedy` items are {"text", "finished"}. Returns (candidates, stats)."""
    stats = {"sampled": len(sampled), "truncated": 0, "too_short": 0, "too_long": 0, "unique": 0}
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


def _eos_ids(model, tok) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    return sorted(set(ids) | {tok.eos_token_id})


def _generate(model, tok, prompt: str, n: int, sc: SampleSpaceConfig, sample: bool, seed: int) -> list[dict]:
    """`n` answers to one prompt; every row shares the prompt, so no padding is needed."""
    import torch
    from transformers import GenerationConfig

    eos = _eos_ids(model, tok)
    gen = GenerationConfig(do_sample=sample, temperature=sc.temperature if sample else None,
                           top_p=sc.top_p if sample else None, top_k=0 if sample else None,
                           max_new_tokens=sc.max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    torch.manual_seed(seed)
    out = []
    for start in range(0, n, sc.batch_size):
        b = min(sc.batch_size, n - start)
        with torch.no_grad():
            seqs = model.generate(input_ids=ids.expand(b, -1), attention_mask=torch.ones_like(ids).expand(b, -1),
                                  generation_config=gen)
        for row in seqs[:, ids.shape[1]:].tolist():
            finished = any(t in eos for t in row)
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append({"text": tok.decode(row[:cut], skip_special_tokens=True), "finished": finished})
    return out


def _chunks(model, tok, prompt: str, sc: SampleSpaceConfig, workdir: Path) -> list[dict]:
    """All sampled answers, generating only chunks not already on disk."""
    from tqdm.auto import tqdm

    state = workdir / STATE_DIR / "chunks"
    state.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(sc.num_samples / sc.chunk_size)
    answers = []
    with tqdm(total=sc.num_samples, desc="[sample_space] generating", unit="answer") as bar:
        for c in range(n_chunks):
            path = state / f"chunk_{c:05d}.json"
            n = min(sc.chunk_size, sc.num_samples - c * sc.chunk_size)
            chunk = _saved_chunk(path, n)
            if chunk is None:
                chunk = _generate(model, tok, prompt, n, sc, True, sc.seed * 1_000_003 + c)
                write_json(path, chunk)
                log_work(workdir, "generated_chunk", 1)
                failpoint("sample_space.chunk")
            answers += chunk
            bar.update(len(chunk))
    return answers


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


def _greedy(model, tok, prompt: str, sc: SampleSpaceConfig, workdir: Path) -> dict:
    path = workdir / STATE_DIR / "chunks" / "greedy.json"
    saved = _saved_chunk(path, 1)
    if saved is None:
        saved = _generate(model, tok, prompt, 1, sc, False, 0)
        write_json(path, saved)
    return saved[0]


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
    extra = []
    if sc.extra_path:
        path = JESTER_DIR / "jester_jokes.csv" if sc.extra_path == "jester" else sc.extra_path
        extra = [str(t) for t in read_table(path, ["text"], "sample_space.extra_path")["text"].dropna()]
    model, tok = load_model(cfg.model)
    prompt = chat_prompt(tok, sc.query, sc.system_prompt)
    sampled, greedy = [], None
    if not sc.only_extra:
        sampled = _chunks(model, tok, prompt, sc, workdir)
        greedy = _greedy(model, tok, prompt, sc, workdir)
    candidates, stats = build_candidates(sampled, greedy, extra, sc)
    if not candidates:
        raise StageError(_empty_message(sc, stats, len(extra)))
    texts = [c["text"] for c in candidates]
    scores = answer_scores(model, tok, prompt, texts, desc="[sample_space] scoring")
    ds = Dataset.from_dict({
        "id": list(range(len(candidates))), "text": texts, "count": [c["count"] for c in candidates],
        "sum_logprob": [s[0] for s in scores], "mean_logprob": [s[1] for s in scores],
        "is_greedy": [c["is_greedy"] for c in candidates], "source": [c["source"] for c in candidates],
        "text_sha": [text_sha(t) for t in texts]})
    stats["greedy"] = greedy["text"] if greedy else None
    write_json(workdir / "summary.json", stats)
    tracking.summary({f"sample_space/{k}": v for k, v in stats.items() if k != "greedy"})
    print(f"[sample_space] {stats['sampled']} sampled, {stats['truncated']} truncated, "
          f"{stats['unique']} unique candidates", flush=True)
    return ds
