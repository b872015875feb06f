"""The model as a pairwise judge, and the pair cache that stores its answers.

`ModelJudge(first_ids, second_ids) -> P(first shown is chosen)`: one forward pass per comparison,
read from the next-token distribution over the two label tokens (renormalised over the two, scaled by
`judge.temperature`), no generation. Only last-position logits are computed. The prompt is encoded
as segments, head | first | mid | second | tail, so that shared prefixes (the instruction; the
instruction plus the first candidate) are run once and their key/value cache reused; suffixes are
right-padded, which causal attention never looks at, and bucketed by length.

`PairStore` persists every computed probability as it is computed (JSONL, keyed by the judge's key
and the two texts' hashes), so a killed run, a later stage, or another process reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pipeline.config import JudgeConfig, ModelConfig, semantic_settings
from pipeline.models import chat_prompt, single_token_id

FIRST, SECOND = "\x00FIRST\x00", "\x00SECOND\x00"


def judge_key(mcfg: ModelConfig, jcfg: JudgeConfig, query: str, adapter: str | None = None) -> str:
    """What a cached probability depends on: model (and adapter), prompt, labels, temperature."""
    payload = {"model": semantic_settings(mcfg), "adapter": adapter, "judge": semantic_settings(jcfg), "query": query}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prompt_segments(tok, jcfg: JudgeConfig, query: str) -> tuple[str, str, str]:
    """(head, mid, tail) of the chat-templated judge prompt around the two candidates."""
    labels = {"label_first": jcfg.labels[0], "label_second": jcfg.labels[1]}
    user = jcfg.template.format(query=query, first=FIRST, second=SECOND, question=jcfg.question, **labels)
    text = chat_prompt(tok, user, jcfg.system_prompt)
    head, rest = text.split(FIRST)
    mid, tail = rest.split(SECOND)
    return head, mid, tail


class ModelJudge:
    def __init__(self, model, tok, jcfg: JudgeConfig, query: str, texts: list[str], progress: bool = False):
        self.model, self.tok, self.jcfg, self.progress = model, tok, jcfg, progress
        self.label_ids = [single_token_id(tok, lab, "judge label") for lab in jcfg.labels]
        enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
        head, mid, tail = prompt_segments(tok, jcfg, query)
        self.head, self.mid, self.tail = enc(head), enc(mid), enc(tail)
        self.cands = [enc(t) for t in texts]
        self.last_mass = np.empty(0)  # probability on the two labels, per comparison of the last call
        self.tokens = 0  # tokens actually run through the model
        self._head_kv = None

    # -- forward passes -------------------------------------------------------------------------
    def _kv(self, prefix_kv, ids: list[int]):
        """Key/value tensors of `ids` appended to `prefix_kv` (batch 1)."""
        import torch

        out = self.model.get_decoder()(input_ids=torch.tensor([ids], device=self.model.device),
                                       past_key_values=self._cache(prefix_kv, 1), use_cache=True)
        self.tokens += len(ids)
        return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _cache(self, kv, batch: int):
        from transformers import DynamicCache

        if kv is None:
            return DynamicCache(config=self.model.config)
        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in kv], config=self.model.config)

    def _last_logits(self, prefix_kv, suffixes: list[list[int]]):
        """Label log-probabilities and log mass for each suffix after a shared prefix."""
        import torch

        width = max(map(len, suffixes))
        ids = torch.full((len(suffixes), width), self.tok.pad_token_id, device=self.model.device)
        for r, s in enumerate(suffixes):  # right padding: real tokens never attend to later pads
            ids[r, :len(s)] = torch.tensor(s)
        hidden = self.model.get_decoder()(input_ids=ids, past_key_values=self._cache(prefix_kv, len(suffixes)),
                                          use_cache=prefix_kv is not None).last_hidden_state
        last = hidden[torch.arange(len(suffixes)), torch.tensor([len(s) - 1 for s in suffixes])]
        logits = self.model.get_output_embeddings()(last).float()
        self.tokens += sum(map(len, suffixes))
        labels = logits[:, self.label_ids]
        log_mass = torch.logsumexp(labels, -1) - torch.logsumexp(logits, -1)
        return labels, log_mass

    def _run_group(self, prefix_kv, suffixes: list[list[int]], out: np.ndarray, rows: list[int], bar) -> None:
        """Fill out[rows] (P(first chosen)) and last_mass[rows] for suffixes sharing one prefix."""
        import torch

        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))  # length buckets
        for start in range(0, len(order), self.jcfg.batch_size):
            idx = order[start:start + self.jcfg.batch_size]
            labels, log_mass = self._last_logits(prefix_kv, [suffixes[i] for i in idx])
            p_first = torch.softmax(labels / self.jcfg.temperature, dim=-1)[:, 0]
            for r, i in enumerate(idx):
                out[rows[i]] = float(p_first[r])
                self.last_mass[rows[i]] = float(torch.exp(log_mass[r]))
            if bar is not None:
                bar.update(len(idx))

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        out = np.empty(len(first))
        self.last_mass = np.empty(len(first))
        groups: dict[int, list[int]] = {}
        for r, f in enumerate(first.tolist()):
            groups.setdefault(f, []).append(r)
        bar = tqdm(total=len(first), desc="[judge] comparisons", leave=False) if self.progress else None
        with torch.no_grad():
            if not self.jcfg.prefix_cache:
                rows = list(range(len(first)))
                full = [self.head + self.cands[f] + self.mid + self.cands[s] + self.tail
                        for f, s in zip(first.tolist(), second.tolist())]
                self._run_group(None, full, out, rows, bar)
                return out
            if self._head_kv is None:
                self._head_kv = self._kv(None, self.head)  # the instruction, shared by every comparison
            singles = [r for rows in groups.values() if len(rows) == 1 for r in rows]
            if singles:  # comparisons with a first candidate of their own share only the instruction
                suffixes = [self.cands[first[r]] + self.mid + self.cands[second[r]] + self.tail for r in singles]
                self._run_group(self._head_kv, suffixes, out, singles, bar)
            for f, rows in groups.items():
                if len(rows) > 1:  # many comparisons with the same first candidate: run it once
                    kv = self._kv(self._head_kv, self.cands[f] + self.mid)
                    self._run_group(kv, [self.cands[second[r]] + self.tail for r in rows], out, rows, bar)
        if bar is not None:
            bar.close()
        return out


class PairStore:
    """Append-only JSONL of computed comparisons, one file per process, keyed by judge key + text hashes."""

    def __init__(self, folder: Path, key: str, shas: list[str], rank: int = 0):
        self.folder, self.key, self.shas = Path(folder), key, shas
        self.index = {sha: i for i, sha in enumerate(shas)}
        self.path = self.folder / f"pair_cache.rank{rank}.jsonl"
        self.label_mass: dict[tuple[int, int], float] = {}

    def load(self, extra_files: list[Path] = ()) -> dict:
        """Every stored probability for this judge and these texts, as {(first_id, second_id): p}."""
        probs = {}
        for path in [*sorted(self.folder.glob("pair_cache.rank*.jsonl")), *extra_files]:
            for line in Path(path).read_text().splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: recomputed
                    continue
                f, s = self.index.get(e["f"]), self.index.get(e["s"])
                if e["k"] == self.key and f is not None and s is not None:
                    probs[f, s] = e["p"]
                    self.label_mass[f, s] = e["m"]
        return probs

    def append(self, pairs: list[tuple[int, int]], probs: np.ndarray, masses: list[float]) -> None:
        lines = [json.dumps({"k": self.key, "f": self.shas[f], "s": self.shas[s], "p": float(p), "m": float(m)})
                 for (f, s), p, m in zip(pairs, probs, masses)]
        self.label_mass.update(zip(pairs, masses))
        with open(self.path, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
