"""The model as a pairwise judge, and the pair cache that stores its answers.

`ModelJudge(first_ids, second_ids) -> P(first shown is chosen)`: one forward pass per comparison,
read from the next-token distribution over the two label tokens (renormalised over the two, scaled by
`judge.temperature`), no generation. Only last-position logits are computed. The prompt is encoded
as segments, head | first | mid | second | tail, so that shared prefixes (the instruction; the
instruction plus the first candidate) are run once and their key/value cache reused; suffixes are
right-padded, which causal attention never looks at, and bucketed by length.

`PairStore` persists every computed probability as it is computed (JSONL, keyed by the judge's key
and the two texts' hashes), so a killed run, a later stage, or another process reuses them.
`cached_judge` puts the two together (the judge being the policy, another model or a reward function,
pipeline/reward_judge.py) (the model is loaded only when a comparison is missing),
and `fill_pairs` asks it for a whole design, split across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline import parallel
from pipeline.chains import CachedJudge
from pipeline.config import Config, JudgeConfig, ModelConfig, semantic_settings
from pipeline.hashing import text_sha
from pipeline.models import chat_prompt, padded, single_token_id
from pipeline.workdir import failpoint, log_work

FIRST, SECOND = "\x00FIRST\x00", "\x00SECOND\x00"


def judge_key(mcfg: ModelConfig, jcfg: JudgeConfig, query: str, adapter: str | None = None) -> str:
    """What a cached probability depends on: the judging model (and adapter) or the reward function's file
    content, the prompt, labels, temperature."""
    if jcfg.kind == "function":
        from pipeline.reward_judge import function_sha

        payload = {"function": jcfg.function, "sha": function_sha(jcfg.function), "temperature": jcfg.temperature,
                   "query": query}
    else:
        payload = {"model": semantic_settings(judge_model(mcfg, jcfg)), "adapter": adapter,
                   "judge": semantic_settings(jcfg), "query": query}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def judge_is_policy(jcfg: JudgeConfig) -> bool:
    """The judge is the model being trained (its adapter judges in later rounds), not a fixed judge."""
    return jcfg.kind == "model" and not jcfg.model


def judge_model(mcfg: ModelConfig, jcfg: JudgeConfig) -> ModelConfig:
    """The judging model's settings: judge.model with the policy's device settings, or the policy."""
    import dataclasses

    return mcfg if jcfg.model is None else dataclasses.replace(mcfg, name_or_path=jcfg.model)


def prompt_segments(tok, jcfg: JudgeConfig, query: str) -> tuple[str, str, str]:
    """(head, mid, tail) of the chat-templated judge prompt around the two candidates."""
    labels = {"label_first": jcfg.labels[0], "label_second": jcfg.labels[1]}
    user = jcfg.template.format(query=query, first=FIRST, second=SECOND, question=jcfg.question, **labels)
    text = chat_prompt(tok, user, jcfg.system_prompt)
    head, rest = text.split(FIRST)
    mid, tail = rest.split(SECOND)
    return head, mid, tail


def _stacked(per_row: list[list], width: int) -> list:
    """One batch of key/values per layer from rows of one each ([1, heads, length, dim]), right-padded to `width`."""
    import torch

    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2]))  # noqa: E731
    return [(torch.cat([pad(row[layer][0]) for row in per_row]), torch.cat([pad(row[layer][1]) for row in per_row]))
            for layer in range(len(per_row[0]))]


def _nbytes(kv: list) -> int:
    return sum(t.numel() * t.element_size() for pair in kv for t in pair)


class ModelJudge:
    """Over candidates `texts` answering one query, or several (`queries`, with `prompt_of[i]` the query
    candidate i answers; a comparison is always between two answers to the same query)."""

    def __init__(self, model, tok, jcfg: JudgeConfig, queries: str | list[str], texts: list[str],
                 prompt_of: list[int] | None = None, progress: bool = False):
        self.model, self.tok, self.jcfg, self.progress = model, tok, jcfg, progress
        self.label_ids = [single_token_id(tok, lab, "judge label") for lab in jcfg.labels]
        enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
        segments = [prompt_segments(tok, jcfg, q) for q in ([queries] if isinstance(queries, str) else queries)]
        self.heads, self.mids, self.tails = ([enc(seg[i]) for seg in segments] for i in range(3))
        self.cands = [enc(t) for t in texts]
        self.prompt_of = list(prompt_of) if prompt_of is not None else [0] * len(texts)
        self.last_mass = np.empty(0)  # probability on the two labels, per comparison of the last call
        self.tokens = 0  # tokens actually run through the model
        self._head_kv: dict[int, list] = {}
        self._row_kv: OrderedDict[int, tuple[list, int]] = OrderedDict()  # first answer -> its row's key/values, length
        self._row_bytes = 0
        self._cache_arg: str | None = None  # the decoder's name for its key/value cache argument

    def reset(self) -> None:
        """Forget every kept key/value and the token count: what the benchmarks time from."""
        self._head_kv, self.tokens = {}, 0
        self._row_kv.clear()
        self._row_bytes = 0

    # -- forward passes -------------------------------------------------------------------------
    def _padded(self, seqs: list[list[int]]):
        """Right-padded ids and their mask (counted: the tokens actually run through the model)."""
        self.tokens += sum(map(len, seqs))
        return padded(seqs, self.tok.pad_token_id, device=self.model.device)

    def _cache(self, kv):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=kv, config=self.model.config)

    def _decode(self, cache, **kwargs):
        """The decoder over a key/value cache. transformers renamed forward's `past_key_values` to `cache` (and the
        output's) during 5.x, warning on the old name: the current name where the model's forward has it."""
        decoder = self.model.get_decoder()
        if self._cache_arg is None:
            import inspect

            self._cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        out = decoder(**kwargs, **{self._cache_arg: cache})
        return out, getattr(out, self._cache_arg, None)

    def _head_cache(self, p: int) -> list:
        """Key/values of query p's instruction, shared by every comparison of its answers (computed once)."""
        if p not in self._head_kv:
            ids, _ = self._padded([self.heads[p]])
            _, kv = self._decode(self._cache(None), input_ids=ids, use_cache=True)
            self._head_kv[p] = [(layer.keys, layer.values) for layer in kv.layers]
        return self._head_kv[p]

    def _heads_for(self, prompts: list[int]):
        """The rows' instruction key/values and mask: one query's expanded (no copy); several queries'
        right-padded to the longest instruction, the padding masked out."""
        import torch

        device = self.model.device
        if len(set(prompts)) == 1:
            kv = self._head_cache(prompts[0])
            n, length = len(prompts), len(self.heads[prompts[0]])
            return ([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv],
                    torch.ones(n, length, dtype=torch.long, device=device), False)
        distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        width = max(len(self.heads[p]) for p in distinct)
        # each query's instruction padded once, then picked per row (a pad per row and layer: 1.0 against 0.4 ms)
        pick = torch.tensor([distinct[p] for p in prompts], device=device)
        kv = [(k[pick], v[pick]) for k, v in _stacked([self._head_cache(p) for p in distinct], width)]
        lengths = torch.tensor([len(self.heads[p]) for p in prompts], device=device)
        return kv, (torch.arange(width, device=device)[None, :] < lengths[:, None]).long(), True

    def _row_prefixes(self, firsts: list[int]):
        """Key/values of instruction + first candidate for a block of rows, right-padded to the longest, their mask
        and lengths. Each row's are kept between calls (judge.prefix_cache_mb, least recently used out): an active
        design's round or a chain step has one comparison per first candidate, and asks for the same ones again."""
        import torch

        size = self.jcfg.batch_size
        if self.jcfg.prefix_cache_mb == 0:  # nothing kept: this block's rows, together
            self._compute_rows(list(firsts))
        for group in dict.fromkeys(f // size for f in firsts if f not in self._row_kv):
            # a kept row is always computed in the same company (its id's group, padded alike), so its key/values, and
            # the choices, are the same bits whichever call first needed it: a resumed run equals an uninterrupted one
            # (tests/test_prompts.py's kill-and-resume test fails when a row keeps the company of its first call)
            self._compute_rows(list(range(group * size, min((group + 1) * size, len(self.cands)))))
        rows = [self._row_kv[f] for f in firsts]
        for f in firsts:
            self._row_kv.move_to_end(f)
        width = max(length for _, length in rows)
        kv = _stacked([kv for kv, _ in rows], width)
        lengths = torch.tensor([length for _, length in rows], device=self.model.device)
        mask = (torch.arange(width, device=self.model.device)[None, :] < lengths[:, None]).long()
        self._evict(self.jcfg.prefix_cache_mb * 2**20)
        return kv, mask, lengths

    def _compute_rows(self, firsts: list[int]) -> None:
        """One forward of these rows' first candidates over their instruction cache; each row's key/values are
        stored without their padding (`_row_prefixes` pads them again to each block's longest)."""
        import torch

        prompts = [self.prompt_of[f] for f in firsts]
        head, head_mask, mixed = self._heads_for(prompts)
        ids, row_mask = self._padded([self.cands[f] + self.mids[p] for f, p in zip(firsts, prompts)])
        if mixed:  # holes in the instruction cache: explicit mask and positions
            positions = head_mask.sum(1, keepdim=True) + torch.arange(ids.shape[1], device=ids.device)
            _, cache = self._decode(self._cache(head), input_ids=ids, attention_mask=torch.cat([head_mask, row_mask], 1),
                                    position_ids=positions, use_cache=True)
        else:
            _, cache = self._decode(self._cache(head), input_ids=ids, use_cache=True)
        mask = torch.cat([head_mask.to(row_mask.dtype), row_mask], 1).bool()
        for r, f in enumerate(firsts):
            if f in self._row_kv:  # kept from before: the same bits
                continue
            keep = mask[r].nonzero().squeeze(1)
            kv = [(layer.keys[r:r + 1, :, keep], layer.values[r:r + 1, :, keep]) for layer in cache.layers]
            self._row_kv[f] = (kv, len(keep))
            self._row_bytes += _nbytes(kv)

    def _evict(self, limit: int) -> None:
        while self._row_kv and self._row_bytes > limit:
            self._row_bytes -= _nbytes(self._row_kv.popitem(last=False)[1][0])

    def _label_logits(self, seqs: list[list[int]], prefix=None, rows=None):
        """Label logits and log label mass at each sequence's last token, optionally continuing the
        row prefixes `prefix` (kv, mask, lengths) selected by `rows`. Only last positions reach the head."""
        import torch

        ids, mask = self._padded(seqs)
        if prefix is None:
            hidden = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        else:
            kv, pmask, lengths = prefix
            sel = torch.tensor(rows, device=ids.device)
            positions = lengths[sel][:, None] + torch.arange(ids.shape[1], device=ids.device)  # after each row's real prefix
            hidden = self._decode(self._cache([(k[sel], v[sel]) for k, v in kv]), input_ids=ids, use_cache=True,
                                  attention_mask=torch.cat([pmask[sel], mask], 1), position_ids=positions
                                  )[0].last_hidden_state
        last = hidden[torch.arange(len(seqs)), mask.sum(1) - 1]
        logits = self.model.get_output_embeddings()(last).float()
        labels = logits[:, self.label_ids]
        return labels, torch.logsumexp(labels, -1) - torch.logsumexp(logits, -1)

    def _fill(self, out: np.ndarray, idx: list[int], labels, log_mass, bar) -> None:
        import torch

        p_first = torch.softmax(labels / self.jcfg.temperature, dim=-1)[:, 0]
        out[idx] = p_first.cpu().numpy()
        self.last_mass[idx] = torch.exp(log_mass).cpu().numpy()
        if bar is not None:
            bar.update(len(idx))

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """P(first shown is chosen) per comparison. Rows (first candidates) are processed in blocks of
        `batch_size`: their prefixes in one forward, then their comparisons' suffixes (second
        candidate + tail) in length-sorted batches that mix rows."""
        import torch
        from tqdm.auto import tqdm

        first, second = np.asarray(first).tolist(), np.asarray(second).tolist()
        out, self.last_mass = np.empty(len(first)), np.empty(len(first))
        bs = self.jcfg.batch_size
        bar = tqdm(total=len(first), desc="[judge] comparisons", leave=False) if self.progress else None
        with torch.no_grad():
            if not self.jcfg.prefix_cache:
                full = [self.heads[p] + self.cands[f] + self.mids[p] + self.cands[s] + self.tails[p]
                        for f, s, p in ((f, s, self.prompt_of[f]) for f, s in zip(first, second))]
                order = sorted(range(len(full)), key=lambda i: len(full[i]))
                for k in range(0, len(order), bs):
                    idx = order[k:k + bs]
                    self._fill(out, idx, *self._label_logits([full[i] for i in idx]), bar)
            else:
                firsts = list(dict.fromkeys(first))
                for b in range(0, len(firsts), bs):
                    block = {f: r for r, f in enumerate(firsts[b:b + bs])}
                    prefix = self._row_prefixes(list(block))
                    todo = sorted((i for i, f in enumerate(first) if f in block),
                                  key=lambda i: len(self.cands[second[i]]))
                    for k in range(0, len(todo), bs):
                        idx = todo[k:k + bs]
                        seqs = [self.cands[second[i]] + self.tails[self.prompt_of[first[i]]] for i in idx]
                        self._fill(out, idx, *self._label_logits(seqs, prefix, [block[first[i]] for i in idx]), bar)
        if bar is not None:
            bar.close()
        return out


class PairStore:
    """Append-only JSONL of computed comparisons, one file per process, keyed by judge key (one per
    query: model, adapter, judge settings, query) + text hashes."""

    def __init__(self, folder: Path, keys: list[str], shas: list[str], prompt_of: list[int] | None = None,
                 rank: int = 0):
        self.folder, self.keys, self.shas = Path(folder), keys, shas
        self.prompt_of = list(prompt_of) if prompt_of is not None else [0] * len(shas)
        self.index = {(keys[p], sha): i for i, (sha, p) in enumerate(zip(shas, self.prompt_of))}
        self.path = self.folder / f"pair_cache.rank{rank}.jsonl"
        self.label_mass: dict[tuple[int, int], float] = {}

    def load(self, extra_files: list[Path] = ()) -> dict:
        """Every stored probability for this judge and these texts, as {(first_id, second_id): p}."""
        probs = {}
        for path in [*sorted(self.folder.glob("pair_cache.rank*.jsonl")), *extra_files]:
            for line in Path(path).read_text().splitlines():
                try:  # a line cut short by a kill, or of another shape: skipped, so recomputed
                    e = json.loads(line)
                    f, s = self.index.get((e["k"], e["f"])), self.index.get((e["k"], e["s"]))
                    p, m = float(e["p"]), float(e["m"])
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue
                if f is not None and s is not None and 0.0 <= p <= 1.0:
                    probs[f, s] = p
                    self.label_mass[f, s] = m
        return probs

    def append(self, pairs: list[tuple[int, int]], probs: np.ndarray, masses: list[float]) -> None:
        lines = [json.dumps({"k": self.keys[self.prompt_of[f]], "f": self.shas[f], "s": self.shas[s], "p": float(p),
                             "m": float(m)})
                 for (f, s), p, m in zip(pairs, probs, masses)]
        self.label_mass.update(zip(pairs, masses))
        with open(self.path, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())


def cached_judge(cfg: Config, texts: list[str], folder: Path, load, queries: str | list[str],
                 prompt_of: list[int] | None = None, adapter_key: str | None = None,
                 extra_cache_files: list[Path] = (), rank: int = 0) -> tuple[CachedJudge, PairStore]:
    """The run's judge over `texts` (answers to `queries`), memoised through the pair cache (the folder's, plus
    any `extra_cache_files`): the policy, `load()` -> (model, tokenizer) with its adapter `adapter_key`; another
    model (judge.model); or a reward function (judge.function). Nothing is loaded until a comparison is missing."""
    queries = [queries] if isinstance(queries, str) else list(queries)
    texts = texts[:]  # a datasets Column read whole: iterating one reads a row at a time (~20 us a value)
    prompt_of = list(prompt_of) if prompt_of is not None else [0] * len(texts)
    if not judge_is_policy(cfg.judge):
        adapter_key = None  # a fixed judge: the same whichever policy's answers it reads
    keys = [judge_key(cfg.model, cfg.judge, q, adapter_key) for q in queries]
    store = PairStore(folder, keys, [text_sha(t) for t in texts], prompt_of, rank=rank)
    holder = {}

    def judge(first, second):
        if "judge" not in holder:
            holder["judge"] = _new_judge(cfg, load, queries, texts, prompt_of)
        return holder["judge"](first, second)

    def persist(pairs, probs):
        store.append(pairs, probs, holder["judge"].last_mass.tolist())
        log_work(folder, "judge_comparisons", len(pairs))

    return CachedJudge(judge, store.load(extra_cache_files), on_new=persist), store


def _new_judge(cfg: Config, load, queries: list[str], texts: list[str], prompt_of: list[int]):
    if cfg.judge.kind == "function":
        from pipeline.reward_judge import RewardJudge

        return RewardJudge(cfg.judge.function, cfg.judge.temperature, queries, texts, prompt_of)
    if cfg.judge.model is not None:
        from pipeline.models import load_model

        model, tok = load_model(judge_model(cfg.model, cfg.judge))
    else:
        model, tok = load()
    return ModelJudge(model, tok, cfg.judge, queries, texts, prompt_of)


def fill_pairs(cached: CachedJudge, pairs: list[tuple[int, int]], stage: str, desc: str, distributed: bool = True,
               chunk: int = 256, progress: bool = True) -> None:
    """Every comparison of a design, in chunks of `chunk` consecutive pairs of the sorted design (a chunk's pairs
    share first candidates, so their prefixes are reused); with `distributed`, chunk c is process c % K's, then
    the processes' answers are merged. Each chunk is one judge call over the same pairs however many processes
    share the work (and the same after a resume: a chunk is persisted whole), so the batches, and the bits of
    every choice, do not depend on K. The failpoint after each chunk is the calling stage's (`stage`.design_chunk)."""
    from tqdm.auto import tqdm

    rank, world = (parallel.rank(), parallel.world_size()) if distributed else (0, 1)
    design = sorted(set(pairs))
    chunks = [design[start:start + chunk] for start in range(0, len(design), chunk)][rank::world]
    mine = [p for c in chunks for p in c]
    todo = [[p for p in c if p not in cached.probs] for c in chunks]
    with tqdm(total=len(mine), initial=len(mine) - sum(map(len, todo)), desc=f"[{stage}] {desc}", unit="cmp",
              disable=not progress) as bar:
        for part in filter(None, todo):
            cached.ensure(part)
            bar.update(len(part))
            failpoint(f"{stage}.design_chunk")
    if distributed:
        for probs in parallel.gather({p: cached.probs[p] for p in mine}):
            cached.probs.update(probs)
