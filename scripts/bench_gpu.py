"""GPU checks and measurements (run on a CUDA machine after `bash scripts/gpu_setup.sh install`).

    python scripts/bench_gpu.py agreement --reference CPU_CACHE.jsonl RUN_DIR [RUN_DIR ...]
        the judge's probabilities in each run's spmcmc pair cache against the CPU fp32 run's, matched by
        the two texts' hashes: max and median |difference|
    python scripts/bench_gpu.py prefix --texts TEXTS.csv [--dtype bfloat16]
        the prefix-cache judge against the plain judge (whole prompt per comparison) on every ordered pair
    python scripts/bench_gpu.py judge --n 237 [--config llama-8b] [--batch-sizes 64,128]
        an 8B Llama-shaped model built from its config with random weights (no download), bf16: the full
        N(N-1) matrix and the sparse design, comparisons/s and MFU against the bf16 matmul rate measured
        in the same run; a torch.profiler table of one block
    python scripts/bench_gpu.py qlora [--config llama-8b] [--steps 4]
        a few LoRA-DPO steps on that model saved to disk: bf16 LoRA against 4-bit QLoRA, peak GPU memory
        and step time

`--config tiny` runs every subcommand on CPU in seconds (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {  # Llama-3.1-8B's shape; `tiny` for a CPU dry run
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    "tiny": dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def device_and_dtype(config: str):
    import torch

    return ("cuda", torch.bfloat16) if config != "tiny" else ("cpu", torch.float32)


def tokenizer(path: str | None = None):
    """SmolLM2's tokenizer and chat template: from `path` (a folder with only the tokenizer files, so a GPU
    machine needs no model weights for the synthetic benches) or from the embedded model."""
    from pipeline.config import ModelConfig
    from pipeline.models import load_tokenizer, resolve_model_path

    mcfg = ModelConfig()
    return load_tokenizer(Path(path) if path else resolve_model_path(mcfg), mcfg)


def random_model(config: str, tok):
    """A Llama-shaped model with random weights, built directly on the device (nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device, dtype = device_and_dtype(config)
    cfg = LlamaConfig(**CONFIGS[config], max_position_embeddings=8192, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(previous)
    return model.eval()


def candidate_texts(tok, n: int, tokens: int) -> list[str]:
    """n distinct texts of about `tokens` tokens: windows over the Jester jokes' token stream."""
    import pandas as pd

    from pipeline.ratings import JESTER_DIR

    stream = tok(" ".join(pd.read_csv(JESTER_DIR / "jester_jokes.csv")["text"]), add_special_tokens=False).input_ids
    step = max(1, (len(stream) - tokens) // n)
    return [tok.decode(stream[k * step: k * step + tokens]).strip() for k in range(n)]


def read_cache(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        out[e["f"], e["s"]] = e["p"]
    return out


def agreement(args) -> None:
    ref = read_cache(Path(args.reference))
    print("| run | dtype | common comparisons | max abs diff | median abs diff |\n| --- | --- | ---: | ---: | ---: |")
    for run in args.runs:
        meta = next(Path(run).glob("spmcmc/*/meta.json"))
        got = {}
        for f in meta.parent.glob("pair_cache.rank*.jsonl"):
            got.update(read_cache(f))
        common = sorted(set(ref) & set(got))
        diff = np.abs(np.array([ref[k] for k in common]) - np.array([got[k] for k in common]))
        dtype = json.loads(meta.read_text())["config"]["model"]["dtype"]
        print(f"| {run} | {dtype} | {len(common)} | {diff.max():.2e} | {np.median(diff):.2e} |")


def prefix(args) -> None:
    import pandas as pd
    import torch

    from pipeline.config import JudgeConfig, ModelConfig
    from pipeline.judge import ModelJudge
    from pipeline.models import load_model

    texts = pd.read_csv(args.texts, keep_default_na=False, dtype=str)["text"].tolist()[: args.n]
    pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if i != j]
    first, second = (np.array(x) for x in zip(*pairs))
    print("| device | dtype | comparisons | max abs diff (prefix cache vs plain) | median |\n| --- | --- | ---: | ---: | ---: |")
    for dtype in args.dtypes.split(","):
        model, tok = load_model(ModelConfig(dtype=dtype, device=args.device))
        jcfg = dict(question="Which joke is funnier?", batch_size=args.batch_size)
        with torch.no_grad():
            cached = ModelJudge(model, tok, JudgeConfig(**jcfg), "Tell me a joke.", texts)(first, second)
            plain = ModelJudge(model, tok, JudgeConfig(**jcfg, prefix_cache=False), "Tell me a joke.", texts)(first, second)
        diff = np.abs(cached - plain)
        print(f"| {model.device.type} | {dtype} | {len(pairs)} | {diff.max():.2e} | {np.median(diff):.2e} |")


def matmul_tflops(dtype, device: str, size: int) -> float:
    import torch

    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start, n = time.perf_counter(), 10
    for _ in range(n):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * n / (time.perf_counter() - start) / 1e12


def timed_fill(judge, pairs) -> tuple[float, int]:
    import torch

    judge.reset()  # from empty prefix caches: rows kept from an earlier fill would flatter the rate
    if judge.model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        judge(*(np.array(x) for x in zip(*pairs)))
    if judge.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, judge.tokens


def judge_bench(args) -> None:
    import torch

    from pipeline.config import JudgeConfig, SpmcmcConfig
    from pipeline.estimates import ordered, plan_design
    from pipeline.judge import ModelJudge

    tok = tokenizer(args.tokenizer)
    model = random_model(args.config, tok)
    device, dtype = device_and_dtype(args.config)
    texts = candidate_texts(tok, args.n, args.tokens)
    non_emb = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    vocab, hidden = model.get_output_embeddings().weight.shape
    peak = matmul_tflops(dtype, device, 8192 if device == "cuda" else 512)
    n = len(texts)
    every = [(i, j) for i in range(n) for j in range(n) if i != j]
    _, edges, _ = plan_design(SpmcmcConfig(budget=args.budget), n)
    sparse = ordered(edges)

    def row(name, pairs, batch):
        judge = ModelJudge(model, tok, JudgeConfig(question="Which joke is funnier?", batch_size=batch),
                           "Tell me a joke.", texts)
        seconds, tokens = timed_fill(judge, pairs)
        flops = 2 * non_emb * tokens + 2 * vocab * hidden * len(pairs)
        print(f"| {name} | {batch} | {len(pairs):,} | {seconds:.1f} | {len(pairs) / seconds:.0f} | "
              f"{tokens / len(pairs):.0f} | {flops / seconds / 1e12:.0f} | {flops / seconds / 1e12 / peak:.1%} |",
              flush=True)
        return judge, seconds

    print(f"model: Llama-shaped {args.config}, {non_emb / 1e9:.2f}B non-embedding params, random weights, {dtype}, "
          f"{device}; {n} candidates of {np.mean([len(tok(t).input_ids) for t in texts]):.0f} tokens")
    print(f"bf16 matmul rate measured in this run: {peak:.0f} TFLOP/s (8192^3)")
    print("| design | batch | comparisons | seconds | cmp/s | tokens/cmp | TFLOP/s | MFU |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    warm = every[: 2 * args.n]
    best, best_rate = None, 0.0
    for batch in map(int, args.batch_sizes.split(",")):
        row(f"warm-up ({len(warm)} pairs)", warm, batch)
        sub = [(i, j) for i, j in every if i < args.probe_rows]
        _, seconds = row(f"full matrix, first {args.probe_rows} rows", sub, batch)
        if len(sub) / seconds > best_rate:
            best, best_rate = batch, len(sub) / seconds
    row("sparse design", sparse, best)
    if len(every) / best_rate <= args.max_full_seconds:
        _, seconds = row("full matrix", every, best)
        print(f"time to fill the full {n}x{n - 1} matrix: {seconds:.1f} s")
    else:
        print(f"full matrix skipped: projected {len(every) / best_rate:.0f} s > --max-full-seconds")
    if args.profile:  # where the time goes, per kernel
        from torch.profiler import ProfilerActivity, profile

        judge = ModelJudge(model, tok, JudgeConfig(question="q", batch_size=best), "Tell me a joke.", texts)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        block = [(i, j) for i, j in every if i < 4]  # a few rows: the profiler's own overhead grows per op
        with profile(activities=activities) as prof, torch.no_grad():
            judge(*(np.array(x) for x in zip(*block)))
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=50))


def qlora(args) -> None:
    import tempfile

    import torch
    from bench_dpo import dpo_step_seconds, pairs_dataset

    from pipeline.config import load_config
    from pipeline.stages.finetune import load_base

    tok = tokenizer(args.tokenizer)
    device, _ = device_and_dtype(args.config)
    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file():
        start = time.perf_counter()
        random_model(args.config, tok).save_pretrained(folder)
        tok.save_pretrained(folder)
        print(f"saved the random {args.config} model to {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    data = pairs_dataset(args.pairs * (args.steps + 1))
    print("| quantization | peak GPU memory (GiB) | mean step (s) | load (s) |\n| --- | ---: | ---: | ---: |")
    for quant in args.quantizations.split(","):
        cfg = load_config(["recipe=jokes_dpo", f"model.name_or_path={folder}", f"finetune.quantization={quant}",
                           f"finetune.batch_size={args.pairs}", "wandb.mode=disabled"])
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model = load_base(cfg, folder, device)
        load = time.perf_counter() - start
        if device != "cuda" or quant == "none":
            model.to(device)
        with tempfile.TemporaryDirectory() as out:
            step = dpo_step_seconds(cfg, model, tok, data, args.steps, out, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(f"| {quant} | {peak:.1f} | {step:.2f} | {load:.0f} |", flush=True)
        del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("agreement")
    a.add_argument("--reference", required=True)
    a.add_argument("runs", nargs="+")
    p = sub.add_parser("prefix")
    p.add_argument("--texts", required=True)
    p.add_argument("--n", type=int, default=45)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=16)
    j = sub.add_parser("judge")
    j.add_argument("--config", default="llama-8b", choices=list(CONFIGS))
    j.add_argument("--n", type=int, default=237)
    j.add_argument("--tokens", type=int, default=60)
    j.add_argument("--budget", type=int, default=5000, help="sparse design budget (spmcmc.budget)")
    j.add_argument("--batch-sizes", default="64,128")
    j.add_argument("--probe-rows", type=int, default=16)
    j.add_argument("--max-full-seconds", type=float, default=300)
    j.add_argument("--profile", action="store_true")
    q = sub.add_parser("qlora")
    q.add_argument("--config", default="llama-8b", choices=list(CONFIGS))
    q.add_argument("--model-dir", default="/tmp/llama8b-random")
    q.add_argument("--quantizations", default="none,4bit")
    q.add_argument("--pairs", type=int, default=4)
    q.add_argument("--steps", type=int, default=3)
    for command in (j, q):
        command.add_argument("--tokenizer", help="folder with SmolLM2's tokenizer files (default: the embedded model)")
    args = ap.parse_args()
    {"agreement": agreement, "prefix": prefix, "judge": judge_bench, "qlora": qlora}[args.command](args)


if __name__ == "__main__":
    main()
