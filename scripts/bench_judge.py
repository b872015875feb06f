"""Judge throughput: the pipeline's judge against a naive baseline, and against the machine's own
matrix-multiply rate, measured side by side in one run.

    python scripts/bench_judge.py                       # embedded SmolLM2-135M, Jester jokes <= 300 chars
    python scripts/bench_judge.py --model PATH --n 237 --dtype bfloat16 --device cuda

naive:     one comparison per call through generate(max_new_tokens=1, output_scores=True), batch 1,
           full logits, the whole prompt every time.
pipeline:  ModelJudge filling every ordered comparison among --n candidates (the spmcmc stage's exact
           mode): batched, last-position logits only, length buckets, shared prefixes run once.
chain:     the same judge on one step's worth of comparisons with distinct first candidates (only
           the instruction is shared), as the chains ask for them when the exact mode is off.
rounds:    the active design's rounds: --rounds calls of up to 32 comparisons (random edges, both orders, no
           candidate twice), with each row's instruction + first answer kept between calls (judge.prefix_cache_mb)
           and with nothing kept (prefix_cache_mb=0), side by side.
The last line reads `judge_speedup_vs_naive=X matmul_fraction=Y`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def matmul_gflops(dtype, device: str, size: int = 2048, seconds: float = 3.0) -> float:
    import torch

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * n / (time.perf_counter() - start) / 1e9


def naive(model, tok, judge, pairs) -> tuple[np.ndarray, float, int]:
    """Whole prompt, generate() for one token, batch 1: what a first notebook does."""
    import torch

    probs, tokens, start = [], 0, time.perf_counter()
    for f, s in pairs:
        ids = torch.tensor([judge.heads[0] + judge.cands[f] + judge.mids[0] + judge.cands[s] + judge.tails[0]],
                           device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        labels = out.scores[0][0, judge.label_ids].float()
        probs.append(float(torch.softmax(labels, -1)[0]))
        tokens += ids.shape[1]
    return np.array(probs), time.perf_counter() - start, tokens


def timed(judge, first, second, calls=None) -> tuple[np.ndarray, float, int]:
    """One call (or `calls`, a list of (first, second) lists, one after the other) from empty prefix caches."""
    import torch

    judge.reset()  # include the shared prefixes in the timing
    start = time.perf_counter()
    p = [judge(np.asarray(f), np.asarray(s)) for f, s in (calls or [(first, second)])]
    if judge.model.device.type == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(p), time.perf_counter() - start, judge.tokens


def active_rounds(n: int, rounds: int, rng) -> list:
    """Rounds of 16 random edges with no candidate twice, both orders: as pipeline/active.py asks."""
    out = []
    for _ in range(rounds):
        order = rng.permutation(n)[: min(32, n - n % 2)]
        edges = list(zip(order[::2].tolist(), order[1::2].tolist()))
        out.append(([a for a, b in edges] + [b for a, b in edges], [b for a, b in edges] + [a for a, b in edges]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=24, help="candidates for the all-pairs fill")
    parser.add_argument("--naive", type=int, default=40, help="comparisons timed for the naive baseline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-chars", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=20, help="active-design rounds timed")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from pipeline.config import JudgeConfig, ModelConfig
    from pipeline.judge import ModelJudge
    from pipeline.models import load_model
    from pipeline.ratings import JESTER_DIR

    torch.manual_seed(0)
    mcfg = ModelConfig(name_or_path=args.model, dtype=args.dtype, device=args.device)
    model, tok = load_model(mcfg)
    jokes = pd.read_csv(JESTER_DIR / "jester_jokes.csv")
    texts = [t for t in jokes["text"] if len(t) <= args.max_chars][: args.n]
    judge = ModelJudge(model, tok, JudgeConfig(question="Which joke is funnier?", batch_size=args.batch_size),
                       "Tell me a joke.", texts)
    n = len(texts)
    all_pairs = [(i, j) for i in range(n) for j in range(n) if j != i]
    non_emb = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    vocab, hidden = model.get_output_embeddings().weight.shape
    dtype = next(model.parameters()).dtype
    device = model.device.type

    with torch.no_grad():
        judge(np.array([0]), np.array([1]))  # warm-up
        p_naive, t_naive, tok_naive = naive(model, tok, judge, all_pairs[: args.naive])
        p_all, t_all, tok_all = timed(judge, *zip(*all_pairs))
        rng = np.random.default_rng(0)
        chain_pairs = [(f, int(rng.choice([j for j in range(n) if j != f]))) for f in rng.permutation(n)]
        _, t_chain, tok_chain = timed(judge, *zip(*chain_pairs))
        rounds = active_rounds(n, args.rounds, rng)
        p_kept, t_kept, tok_kept = timed(judge, None, None, rounds)
        judge.jcfg = JudgeConfig(question="Which joke is funnier?", batch_size=args.batch_size, prefix_cache_mb=0)
        p_none, t_none, tok_none = timed(judge, None, None, rounds)
    gflops = matmul_gflops(dtype, device)

    def rate(tokens, comparisons, seconds):
        flops = 2 * non_emb * tokens + 2 * vocab * hidden * comparisons
        return flops / seconds / 1e9

    rows = [("naive (generate, batch 1)", args.naive, t_naive, tok_naive),
            ("pipeline, all pairs (exact)", len(all_pairs), t_all, tok_all),
            ("pipeline, chain step (distinct firsts)", len(chain_pairs), t_chain, tok_chain),
            ("pipeline, active rounds, rows kept", len(p_kept), t_kept, tok_kept),
            ("pipeline, active rounds, nothing kept", len(p_none), t_none, tok_none)]
    print(f"model {args.model} ({non_emb / 1e6:.1f}M non-embedding params, {dtype}, {device}); "
          f"{n} candidates, mean {np.mean([len(c) for c in judge.cands]):.0f} tokens; batch {args.batch_size}")
    print(f"matmul rate: {gflops:.1f} GFLOP/s ({dtype}, 2048x2048)")
    print(f"{'mode':40s} {'comparisons':>11s} {'seconds':>8s} {'cmp/s':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    for name, count, seconds, tokens in rows:
        g = rate(tokens, count, seconds)
        print(f"{name:40s} {count:11d} {seconds:8.2f} {count / seconds:8.2f} {tokens / seconds:9.0f} {g:8.1f} "
              f"{g / gflops:9.1%}")
    agree = np.abs(p_naive - p_all[: args.naive]).max()
    print(f"max |p_naive - p_pipeline| on the common comparisons: {agree:.2e}")
    print(f"time to fill the {n}x{n - 1} comparison matrix: {t_all:.1f} s")
    print(f"active rounds: rows kept between calls {t_none / t_kept:.2f}x the rate of nothing kept; "
          f"max |difference| {np.abs(p_kept - p_none).max():.2e}")
    speedup = (len(all_pairs) / t_all) / (args.naive / t_naive)
    print(f"judge_speedup_vs_naive={speedup:.2f} matmul_fraction={rate(tok_all, len(all_pairs), t_all) / gflops:.3f}")


if __name__ == "__main__":
    main()
