"""Judge throughput against the number of prompts judged together: the spmcmc stage steps every
prompt's chains at once, so one judge call carries 4 comparisons per prompt (4 chains) instead of 4.

    python scripts/bench_prompts.py                  # embedded SmolLM2-135M, 1 / 8 / 32 prompts
    python scripts/bench_prompts.py --model PATH --device cuda --dtype bfloat16

For P prompts (joke topics), each with 4 Jester jokes as candidates, a chain step is one comparison
per chain (4 chains per prompt, a random first and second answer of the same prompt). `together`
sends a step's comparisons of all prompts in one judge call (what the stage does); `one at a time`
makes one call per prompt per step (what P separate runs would do). Same comparisons, same judge.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", default="1,8,32")
    parser.add_argument("--comparisons", type=int, default=192, help="comparisons timed per setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from pipeline.config import JudgeConfig, ModelConfig
    from pipeline.judge import ModelJudge
    from pipeline.models import load_model
    from pipeline.ratings import JESTER_DIR

    model, tok = load_model(ModelConfig(name_or_path=args.model, dtype=args.dtype, device=args.device))
    jokes = [t for t in pd.read_csv(JESTER_DIR / "jester_jokes.csv")["text"] if len(t) <= 200]
    topics = pd.read_csv(Path(__file__).resolve().parent.parent / "recipes" / "prompts" / "joke_topics.csv")["prompt"]
    jcfg = JudgeConfig(question="Which joke is funnier?", batch_size=args.batch_size)
    print(f"model {args.model} on {model.device.type}; {args.comparisons} comparisons per setting; judge batch "
          f"{args.batch_size}")
    print("| prompts | comparisons per step | cmp/s together | cmp/s one prompt at a time | together / apart |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for p in map(int, args.prompts.split(",")):
        queries = [topics[k % len(topics)] + ("" if k < len(topics) else f" ({k})") for k in range(p)]
        texts = [jokes[(4 * k + j) % len(jokes)] for k in range(p) for j in range(4)]
        prompt_of = [k for k in range(p) for _ in range(4)]
        rng = np.random.default_rng(0)
        steps = []
        while sum(map(len, steps)) < args.comparisons:
            step = []
            for k in range(p):
                for _ in range(4):  # 4 chains per prompt, one comparison each
                    a, b = rng.choice(4, size=2, replace=False)
                    step.append((4 * k + int(a), 4 * k + int(b)))
            steps.append(step)
        rates = []
        for together in (True, False):
            judge = ModelJudge(model, tok, jcfg, queries, texts, prompt_of)
            judge(np.array([0]), np.array([1]))  # instruction caches and warm-up outside the timing
            start, n = time.perf_counter(), 0
            with torch.no_grad():
                for step in steps:
                    calls = [step] if together else [[c for c in step if prompt_of[c[0]] == k] for k in range(p)]
                    for call in calls:
                        judge(*(np.array(x) for x in zip(*call)))
                        n += len(call)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - start))
        print(f"| {p} | {4 * p} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[0] / rates[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
