"""One LoRA-DPO optimisation step (TRL DPOTrainer, the finetune stage's settings) against a plain
forward+backward+optimizer step of a LoRA model over the same tokens, measured in one run.

    python scripts/bench_dpo.py [--model embedded:smollm2-135m-instruct] [--pairs 8] [--steps 4]

DPO does more than one forward+backward by nature (the reference log-probabilities need a forward
with the adapter disabled), so the ideal ratio is about 4/3; the target is <= 2.
The last line reads `dpo_step_ratio=X`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pairs_dataset(n: int):
    import pandas as pd
    from datasets import Dataset

    from pipeline.ratings import JESTER_DIR

    jokes = [t for t in pd.read_csv(JESTER_DIR / "jester_jokes.csv")["text"] if len(t) <= 200]
    msg = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    return Dataset.from_dict({"prompt": [msg("user", "Tell me a joke.")] * n,
                              "chosen": [msg("assistant", jokes[(2 * i) % len(jokes)]) for i in range(n)],
                              "rejected": [msg("assistant", jokes[(2 * i + 1) % len(jokes)]) for i in range(n)]})


def dpo_step_seconds(cfg, model, tok, data, steps: int, out: str, device: str = "cpu") -> float:
    """Mean seconds per LoRA-DPO step after the first (the finetune stage's arguments for `device`)."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from pipeline.stages.finetune import lora_config, training_args

    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device == "cuda":  # kernels run asynchronously: wait for the step to end
                import torch

                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    args = DPOConfig(**{**training_args(cfg, Path(out), device, 1.0), "max_steps": steps + 1, "save_strategy": "no",
                        "report_to": "none", "disable_tqdm": True, "logging_steps": 1000}, beta=cfg.finetune.beta)
    trainer = DPOTrainer(model, args=args, train_dataset=data, processing_class=tok, peft_config=lora_config(cfg),
                         callbacks=[Clock()])
    trainer.train()
    return sum(times[1:]) / len(times[1:])  # the first step warms up


def plain_step_seconds(cfg, model, tok, data, steps: int) -> tuple[float, int]:
    import torch
    from peft import get_peft_model

    from pipeline.stages.finetune import lora_config

    peft = get_peft_model(model, lora_config(cfg))
    texts = [tok.apply_chat_template(row["prompt"] + row[side], tokenize=False) for row in data
             for side in ("chosen", "rejected")]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=cfg.finetune.learning_rate)
    peft.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = peft(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps, int(enc["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from pipeline.config import load_config
    from pipeline.models import load_tokenizer, resolve_model_path, setup_device

    cfg = load_config(["recipe=jokes_dpo", f"model.name_or_path={args.model}", f"finetune.batch_size={args.pairs}"])
    setup_device(cfg.model)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.model)
    data = pairs_dataset(args.pairs * (args.steps + 1))
    fresh = lambda: AutoModelForCausalLM.from_pretrained(path)  # noqa: E731
    plain, plain_tokens = plain_step_seconds(cfg, fresh(), tok, data.select(range(args.pairs)), args.steps)
    with tempfile.TemporaryDirectory() as out:
        dpo = dpo_step_seconds(cfg, fresh(), tok, data, args.steps, out)
    print(f"model {args.model}, LoRA r={cfg.finetune.lora_r} on {list(cfg.finetune.target_modules)}, fp32 CPU, "
          f"{args.pairs} pairs per step ({plain_tokens} real tokens in chosen+rejected)")
    print(f"{'step':45s} {'seconds':>8s}")
    print(f"{'plain forward+backward+AdamW (same tokens)':45s} {plain:8.2f}")
    print(f"{'TRL DPO step (policy fwd+bwd, reference fwd)':45s} {dpo:8.2f}")
    print(f"dpo_step_ratio={dpo / plain:.2f}")


if __name__ == "__main__":
    main()
