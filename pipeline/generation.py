"""The model's answers: sampled or greedy generation for a batch of prompts, and the normalisation
that turns raw answers into comparable candidates (shared by sample_space and evaluate)."""

from __future__ import annotations

import re

from pipeline.models import padded

QUOTES = "\"'“”‘’"


def normalise(text: str, patterns: list[str]) -> str:
    """Collapse whitespace, strip preambles ("Sure! Here's a joke:") and surrounding quotes."""
    from pipeline import user_patterns

    compiled = [user_patterns.compiled(p, user_patterns.regex.IGNORECASE) for p in patterns]
    t = " ".join(text.split())
    while True:  # preambles nest ("Sure! Here's one:"), so strip until nothing changes
        before = t
        for p in compiled:
            t = user_patterns.sub_once(p, t, "sample_space.preamble_patterns").strip()
        inner = t[1:-1]
        if len(t) >= 2 and t[0] in QUOTES and t[-1] in QUOTES and not any(q in inner for q in QUOTES):
            t = inner.strip()
        if t == before:
            return t


def dedup_key(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def eos_ids(model, tok) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    return sorted(set(ids) | {tok.eos_token_id})


def generate(model, tok, prompts: list[str], sc, sample: bool, seed: int, desc: str | None = None) -> list[dict]:
    """One answer per entry of `prompts` (chat-templated texts; repeat a prompt for several answers),
    as {"text", "finished"}, in `sc.batch_size` batches. Rows that share a prompt need no padding;
    batches that mix prompts are left-padded with an attention mask. `sc` gives temperature, top_p,
    max_new_tokens and batch_size (SampleSpaceConfig). `desc`: a progress bar with this label."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    eos = eos_ids(model, tok)
    # sampled answers decode greedily over scores on which `sampler` has already drawn the token (see there). The
    # sampling flags are set to transformers' neutral defaults: left unset, generate() fills them from the model's
    # generation_config.json (Llama-3.1-Instruct: temperature 0.6, top_p 0.9) and warns that greedy ignores them
    gen = GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=sc.max_new_tokens,
                           eos_token_id=eos, pad_token_id=tok.pad_token_id)
    processors = sampler(sc.temperature, sc.top_p) if sample else None
    torch.manual_seed(seed)
    out = []
    with tqdm(total=len(prompts), desc=desc, unit="answer", disable=desc is None) as bar:
        for start in range(0, len(prompts), sc.batch_size):
            ids, mask = _left_padded(tok, prompts[start:start + sc.batch_size], model.device)
            with torch.no_grad():
                seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                      logits_processor=processors)
            for row in seqs[:, ids.shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                out.append({"text": tok.decode(row[:cut], skip_special_tokens=True), "finished": cut < len(row)})
            bar.update(len(seqs))
    return out


def sampler(temperature: float, top_p: float):
    """Logits processors that draw each next token from the distribution transformers' sampling draws from
    (temperature, then nucleus, then softmax) and leave only that token finite, for greedy decoding to take.
    The draw inverts the cumulative distribution with one uniform per row: `torch.multinomial`, which
    `generate(do_sample=True)` calls, took 53 ms per step for 32 rows x 49,152 tokens on the 2-core CPU
    against 4 ms for this (docs/PERFORMANCE.md), and was most of the tiny model's generation time."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    class InverseCdfDraw(LogitsProcessor):
        def __call__(self, input_ids, scores):
            cdf = scores.softmax(-1).double().cumsum(-1)  # summed in float64: no drift over 49,152 terms
            u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
            # the first token whose cumulative mass exceeds u: masked tokens (no mass) are never drawn
            token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
            return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)

    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    return LogitsProcessorList([*warpers, InverseCdfDraw()])


def _left_padded(tok, prompts: list[str], device):
    import torch

    rows = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    if all(r == rows[0] for r in rows):  # one prompt: the same tensor expanded, as generate() sees it unbatched
        ids = torch.tensor([rows[0]], device=device)
        return ids.expand(len(rows), -1), torch.ones_like(ids).expand(len(rows), -1)
    return padded(rows, tok.pad_token_id, left=True, device=device)


def generate_blocks(model, tok, prompts: list[str], sc, seed: int, desc: str, distributed: bool = False) -> list[dict]:
    """Sampled answers as `generate` gives them, one batch of `sc.batch_size` rows at a time, batch b seeded from
    (seed, b): `distributed`, batch b is process b % K's and the answers are gathered to every process, the same
    answers for any K."""
    from tqdm.auto import tqdm

    from pipeline import parallel

    blocks = list(range(0, len(prompts), sc.batch_size))
    with tqdm(total=len(prompts), desc=desc, unit="answer") as bar:
        def block(start: int) -> list[dict]:
            out = generate(model, tok, prompts[start:start + sc.batch_size], sc, True,
                           seed * 1_000_003 + start // sc.batch_size)
            bar.update(len(out))
            return out

        return [a for part in parallel.split_map(block, blocks, distributed) for a in part]
