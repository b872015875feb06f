"""Are the printed intervals and tests what they say? Simulated judges of known truth (pipeline/simulate.py: per-pair
deviations both orders share, position bias P(first) ~ 0.87, preferences that are only length in three shapes or
none, a planted quality under a length bias), no model, a few minutes on 2 cores:

    python scripts/calibrate.py            # the full table
    python scripts/calibrate.py --quick    # a tenth of the simulations

Rows: the strengths' 95% intervals (coverage), the 5% Wald test of "no preference left" (size, two position
biases), gap_z on the pairs it selected (size, cross-fitted and not), the controlled strength's 90% interval
(coverage; power), the preferences stage under control (share of
prompts that give pairs for judges with nothing but length; the share of kept pairs that choose the higher planted
quality), the best-of-8 ceiling (bias against the simulated policy), the length-controlled win rate's 95% interval
(coverage over 10 prompts; one query). Last line:
`wald_size=… strength_coverage=… lc_coverage=… ceiling_bias=… control_pair_precision=…`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import simulate  # noqa: E402

LENGTH_KINDS = ("none", "log_length", "characters", "rank")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the simulations")
    k = 0.1 if ap.parse_args().quick else 1.0
    n = lambda sims: max(int(sims * k), 20)  # noqa: E731
    rows = []
    rows.append(("strengths' 95% interval: coverage", 0.95, simulate.strength_coverage(n(1000), 100), "[0.92, 0.98]"))
    sizes = {pos: simulate.wald_size(n(2000), 101, position=pos) for pos in (0.0, simulate.POSITION)}
    for pos, size in sizes.items():
        rows.append((f"5% Wald test, nothing left (position {pos:g}): size", 0.05, size, "<= 0.07"))
    rows.append(("gap_z >= 1.645 on selected pairs, nothing left: size", 0.05, simulate.gap_z_size(n(1000), 103),
                 "<= 0.07"))
    rows.append(("  the same, ranked and tested on every comparison", 0.05,
                 simulate.gap_z_size(n(1000), 103, crossed=False), "(the winner's curse)"))
    coverage, level, power = simulate.controlled_strength_coverage(n(1000), 102)
    rows.append((f"controlled strength's {level:.0%} interval: coverage", level, coverage, "[0.87, 0.97]"))
    rows.append(("  Wald test's power on a planted quality", None, power, "> 0.9"))
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # the stage's own lines
        seeds = range(110, 110 + max(int(5 * k), 1))
        for kind in LENGTH_KINDS:
            shares = [len(simulate.controlled_pairs(Path(tmp) / f"{kind}{s}", kind, s)[1]) / simulate.P for s in seeds]
            rows.append((f"judge '{kind}' under control: prompts that give pairs", 0.0, float(np.mean(shares)), "<= 0.05"))
        kept = [simulate.controlled_pairs(Path(tmp) / f"planted{s}", "planted", s) for s in seeds]
    precision = float(np.mean([q[a] > q[b] for pairs, _, q in kept for a, b in pairs]))
    rows.append(("planted quality: kept pairs choosing the better answer", None, precision, ">= 0.90"))
    bias = 0.0
    for sd in (0.0, 0.3):
        estimate, truth = simulate.ceiling_bias(n(20000), 120, sd)
        bias = max(bias, abs(estimate - truth))
        rows.append((f"best-of-8 ceiling (quality SD {sd}): estimate - truth", 0.0, estimate - truth, "|.| <= 0.005"))
    over_prompts, one_query = simulate.lc_coverage(n(1000), 130)
    rows.append(("length-controlled win rate, 10 prompts: coverage", 0.95, over_prompts, "[0.92, 0.98]"))
    rows.append(("length-controlled win rate, one query: coverage", 0.95, one_query, "[0.92, 0.98]"))
    print(f"{'figure':58s} {'nominal':>8s} {'measured':>9s}  target")
    for name, nominal, value, target in rows:
        print(f"{name:58s} {'' if nominal is None else f'{nominal:.3f}':>8s} {value:9.4f}  {target}")
    print(f"wald_size={max(sizes.values()):.3f} strength_coverage={coverage:.3f} lc_coverage={over_prompts:.3f} "
          f"ceiling_bias={bias:.4f} control_pair_precision={precision:.3f}")


if __name__ == "__main__":
    main()
