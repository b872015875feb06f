"""How the pipeline's own work grows with the number of prompts: all five stages on the tiny random model (so that the
model costs little and what grows is the pipeline's), on prompt sets of P prompts x 8 answers.

    python scripts/bench_scale.py [--prompts 100,1000,10000] [--samples 8] [--out /tmp/bench_scale]
                                  [--finetune-epochs E] [--until STAGE] [--set KEY=VALUE ...]

Each stage runs in a fresh interpreter of its own (`pipeline/run.py ... stages=[<stage>]`, the earlier stages
already complete on disk), so its peak RSS is its own. Inside it the model's work is timed: every forward pass (the
causal LM, its decoder called directly by the judge, the output head), generation with its sampling, and each
training or evaluation step of the Trainer with its backward pass, and the log-softmax and log-sum-exp over the
vocabulary (scoring answers, the judge's label mass). `own` is the stage's wall time (meta.json's
wall_s) less that: the pipeline's own work (designs, fits, caches, artifacts, reports, loading the model) and the
libraries' around the model (tokenising, the Trainer's data preparation). Per stage: wall, model and own seconds,
own ms per prompt, peak RSS (with the worker processes a stage starts, summed: TreeRss), artifact and pair-cache
size. The growth exponent is the least-squares slope of
log(own time, all stages) on log(P). The last line: `prompts=P own_ms_per_prompt=<worst stage> peak_rss_gb=<worst
stage> exponent=<slope>`.

`--finetune-epochs E` caps training: E epochs at the largest P and E x (largest P) / P at each smaller one, so that
every P trains about the same number of steps (the table gives the steps and the cost per step). Without it each P
trains the recipe's epochs, and the steps grow with P.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("sample_space", "spmcmc", "preferences", "finetune", "evaluate")
TOPICS = ("cats", "dogs", "fish", "cars", "trees", "rain", "bread", "music", "chess", "boats", "bees", "clocks")


def prompt_file(folder: Path, n: int) -> Path:
    path = folder / f"prompts_{n}.csv"
    path.write_text("id,prompt\n" + "".join(f"p{k},Tell me joke number {k} about {TOPICS[k % len(TOPICS)]}.\n"
                                            for k in range(n)))
    return path


def settings(prompts: Path, samples: int, out: Path, epochs: float | None) -> list[str]:
    args = ["recipe=tiny", "sample_space.query=null", f"sample_space.prompts={prompts}",
            "evaluate.query=Tell me a joke.", f"sample_space.num_samples={samples}", "sample_space.chunk_size=32",
            "sample_space.batch_size=32", "spmcmc.design_chunk=256", f"output_dir={out}"]
    return args + ([f"finetune.num_epochs={epochs}"] if epochs is not None else [])


def child(args: list[str]) -> None:
    """One stage in this interpreter, its model time measured; prints one JSON line."""
    import resource

    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from pipeline.run import main

    timed = {"s": 0.0, "depth": 0, "start": 0.0}
    load = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def tagged(cls, *a, **k):
        model = load(cls, *a, **k)
        for module in (model, model.get_decoder(), model.get_output_embeddings()):
            module._bench_timed = True
        return model

    transformers.AutoModelForCausalLM.from_pretrained = classmethod(tagged)

    def enter(module, *_):
        if getattr(module, "_bench_timed", False):
            timed["depth"] += 1
            if timed["depth"] == 1:
                timed["start"] = time.perf_counter()

    def leave(module, *_):
        if getattr(module, "_bench_timed", False):
            timed["depth"] -= 1
            if timed["depth"] == 0:
                timed["s"] += time.perf_counter() - timed["start"]

    torch.nn.modules.module.register_module_forward_pre_hook(enter)
    torch.nn.modules.module.register_module_forward_hook(leave)

    def counted(fn):  # the outermost of these calls counts; forward passes inside them are not counted twice
        def call(*a, **k):
            timed["depth"] += 1
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timed["depth"] -= 1
                if timed["depth"] == 0:
                    timed["s"] += time.perf_counter() - start
        return call

    torch.autograd.backward = counted(torch.autograd.backward)
    # the normalisations over the vocabulary that score answers (log-softmax) and the judge's label mass
    # (log-sum-exp) are the model's output distribution, as generation's sampling is: counted with the model
    torch.log_softmax, torch.logsumexp = counted(torch.log_softmax), counted(torch.logsumexp)
    import trl

    for owner, name in ((transformers.GenerationMixin, "generate"), (transformers.Trainer, "training_step"),
                        (transformers.Trainer, "prediction_step"), (trl.DPOTrainer, "training_step"),
                        (trl.DPOTrainer, "prediction_step")):
        setattr(owner, name, counted(owner.__dict__.get(name, getattr(owner, name))))
    watch = TreeRss()
    code = main(args)
    watch.stop()
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, watch.peak) / 2**30  # KiB -> GiB
    print("BENCH " + json.dumps({"code": code, "model_s": timed["s"], "peak_rss_gb": peak}), flush=True)


class TreeRss:
    """The largest summed RSS of this process and its worker processes (parallel.pool_map), read from /proc every
    50 ms. A worker's own ru_maxrss is no use: a spawned child counts the parent's pages it held between fork and
    exec."""

    def __init__(self):
        import threading

        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, sum(map(_rss, _tree(os.getpid()))))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _tree(pid: int) -> list[int]:
    try:
        kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:
        return [pid]
    return [pid, *(p for k in kids for p in _tree(k))]


def _rss(pid: int) -> int:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def run_stage(stage: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", *args, f"stages=[{stage}]"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"error: {stage} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    m = json.loads(line[6:])
    folder = next(p for p in (out / stage).iterdir() if (p / "meta.json").is_file())
    meta = json.loads((folder / "meta.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    return {"stage": stage, "wall_s": meta["wall_s"], "model_s": min(m["model_s"], meta["wall_s"]),
            "peak_rss_gb": m["peak_rss_gb"], "artifact_mb": size_mb(folder.rglob("*")),
            "cache_mb": size_mb(folder.glob("pair_cache.rank*.jsonl")),
            "steps": summary.get("optimizer_steps")}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="100,1000,10000", help="prompt-set sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=8, help="answers sampled per prompt")
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="finetune.num_epochs at the largest P, scaled up at smaller P to the same steps "
                             "(default: the recipe's)")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1],
                        help="the last stage to run (each stage reads the ones before it)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every stage, after the benchmark's own (e.g. judge.batch_size=64)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.prompts.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'P':>6s} {'stage':12s} {'wall s':>8s} {'model s':>8s} {'own s':>8s} {'own %':>6s} {'own ms/P':>8s} "
          f"{'peak GB':>7s} {'art MB':>7s} {'cache MB':>8s}  note", flush=True)
    own_total, worst = {}, {}
    for n in sizes:
        out = args.out / f"p{n}"
        epochs = args.finetune_epochs and args.finetune_epochs * max(sizes) / n  # the same steps at every P
        run_args = settings(prompt_file(args.out, n), args.samples, out, epochs) + args.set
        rows = []
        for stage in STAGES[:STAGES.index(args.until) + 1]:
            r = run_stage(stage, run_args, out)
            own = r["wall_s"] - r["model_s"]
            note = f"{r['steps']} steps, {r['wall_s'] / r['steps']:.2f} s/step" if r["steps"] else ""
            print(f"{n:6d} {stage:12s} {r['wall_s']:8.1f} {r['model_s']:8.1f} {own:8.1f} "
                  f"{100 * own / max(r['wall_s'], 1e-9):5.0f}% {1000 * own / n:8.2f} {r['peak_rss_gb']:7.2f} "
                  f"{r['artifact_mb']:7.1f} {r['cache_mb']:8.1f}  {note}", flush=True)
            rows.append({**r, "own_s": own})
        own_total[n] = sum(r["own_s"] for r in rows)
        worst[n] = (max(1000 * r["own_s"] / n for r in rows), max(r["peak_rss_gb"] for r in rows))
    exponent = slope(sizes, [own_total[n] for n in sizes]) if len(sizes) > 1 else float("nan")
    n = max(sizes)
    print(f"prompts={n} own_ms_per_prompt={worst[n][0]:.2f} peak_rss_gb={worst[n][1]:.2f} exponent={exponent:.2f}")


if __name__ == "__main__":
    main()
