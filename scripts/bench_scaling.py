"""How spMCMC's cost grows with iterations and sample-space size: judge calls (unique ordered
comparisons the model must compute), chain cache hit rate, kernel wall time and pair-cache memory,
with a fast fake (Bradley–Terry) judge standing in for the model.

    python scripts/bench_scaling.py [--judge-cps 13]

--judge-cps converts judge calls into model time at a measured judge throughput (comparisons per
second; bench_judge.py measures it), so the table also shows where the model's time goes.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.chains import CachedJudge, new_chains, run_chains  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge-cps", type=float, default=13.0, help="model comparisons per second")
    parser.add_argument("--chains", type=int, default=4)
    args = parser.parse_args()
    print(f"{'N':>5s} {'iterations':>10s} {'judge calls':>11s} {'N(N-1)':>8s} {'hit rate':>8s} {'kernel s':>8s} "
          f"{'mem MiB':>9s} {'model min':>9s} {'exact min':>9s}")
    for n in (50, 237, 1000):
        w = np.random.default_rng(0).gamma(1.0, size=n)
        for total in (1_000, 5_000, 20_000):
            cached = CachedJudge(lambda f, s, w=w: w[f] / (w[f] + w[s]))
            tracemalloc.start()
            start = time.perf_counter()
            run_chains(new_chains(n, args.chains, seed=0), n, cached, total // args.chains, "random")
            seconds = time.perf_counter() - start
            memory = tracemalloc.get_traced_memory()[0] / 2 ** 20
            tracemalloc.stop()
            print(f"{n:5d} {total:10d} {cached.calls:11d} {n * (n - 1):8d} {cached.hit_rate:8.3f} {seconds:8.2f} "
                  f"{memory:9.2f} {cached.calls / args.judge_cps / 60:9.1f} {n * (n - 1) / args.judge_cps / 60:9.1f}")


if __name__ == "__main__":
    main()
