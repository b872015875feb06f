"""Simulated judges of known truth with the real judge's failure modes, for the calibration tests
(tests/test_calibration.py) and scripts/calibrate.py: per-pair (intransitive) deviations that both presentation
orders share, a position bias P(first chosen) ~ 0.87 (the embedded model's), preferences that are nothing but
length (linear in log length, in characters, or in the length's rank), none at all, or a planted quality under a
length bias; the yardstick's worlds (reference and null answers; tuned x base cells with a length effect); and a
complete spmcmc artifact written from such a judge without a model (`fake_spmcmc`). No torch.
"""

from __future__ import annotations

import numpy as np

from pipeline import confounds

POSITION = 1.9  # logit(0.87)
P, N = 12, 20  # prompt_set_judge: prompts x answers


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def pair_judge(s, rng, pair_sd=0.5, order_sd=0.1, position=POSITION):
    """Every ordered comparison: logit P(i first chosen) = position + s_i - s_j + d_ij + e_ij, d antisymmetric (the
    same deviation from Bradley–Terry read in both orders), e independent per reading."""
    n = len(s)
    d = np.triu(rng.normal(0, pair_sd, (n, n)), 1)
    d = d - d.T
    e = rng.normal(0, order_sd, (n, n))
    return {(i, j): float(sigmoid(position + s[i] - s[j] + d[i, j] + e[i, j])) for i in range(n) for j in range(n)
            if i != j}


def world(n, rng, length_effect=0.8, quality_sd=0.0):
    """log-length z-scores x, the true strengths s = length_effect x + quality (mean 0) and the controlled truth q."""
    x, names = confounds.standardised({"length": np.log(rng.integers(20, 200, n).astype(float))}, ["length"])
    s = length_effect * x[:, 0] + rng.normal(0, quality_sd, n) * (quality_sd > 0)
    s -= s.mean()
    return x, names, s, confounds.control_residuals(x) @ s


def prompt_set_judge(kind: str, seed: int):
    """P prompts x N answers of log-normal length, and a judge over their global ids: no preference, a pure length
    preference (linear in log length, linear in characters, by the rank of the length), or a planted quality
    under a length bias; all with per-pair deviations and position bias. Returns (texts, judge, quality)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    chars = np.exp(rng.normal(4.5, 0.6, (P, N))).astype(int) + 5
    texts = [("ha " * 400)[:c - 4] + f"{k * N + i:04d}" for k, row in enumerate(chars) for i, c in enumerate(row)]
    quality = rng.normal(0, 0.6, (P, N)) if kind == "planted" else np.zeros((P, N))
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    bias = {"none": lambda c: 0 * c, "log_length": lambda c: z(np.log(c)), "characters": lambda c: z(c),
            "rank": lambda c: z(rankdata(c)), "planted": lambda c: -1.5 * z(np.log(c))}[kind]
    s = np.concatenate([0.8 * bias(c) + q if kind != "planted" else bias(c) + q for c, q in zip(chars, quality)])
    d = np.triu(rng.normal(0, 0.5, (P * N, P * N)), 1)
    d = d - d.T

    def judge(a, b):
        return sigmoid(POSITION + s[a] - s[b] + d[a, b])
    return texts, judge, quality.ravel()


def order_averaged(delta):
    """W of a over b for a logit gap delta that both orders read (position bias cancels in the average)."""
    return 0.5 * (sigmoid(POSITION + delta) + 1 - sigmoid(POSITION - delta))


def yardstick_world(rng, quality_sd, k=8):
    """K reference answers and K null answers of one prompt, with qualities; W between any two with a per-pair
    deviation: (w_pool K x K, w_fresh K null x K reference)."""
    ref, null = rng.normal(0, quality_sd, k), rng.normal(0, quality_sd, k)
    d = np.triu(rng.normal(0, 0.5, (k, k)), 1)
    w_pool = order_averaged(ref[:, None] - ref[None, :] + d - d.T)
    w_fresh = order_averaged(null[:, None] - ref[None, :] + rng.normal(0, 0.5, (k, k)))
    return w_pool, w_fresh


def lc_cells(rng, theta, k=8):
    """One prompt's (tuned x base) cells: W = sigmoid(theta + beta d_length) plus answer effects of both samples
    and cell noise, so the length-controlled win rate (W at zero length difference) is sigmoid(theta)."""
    tuned_len, base_len = rng.normal(0.3, 0.3, k), rng.normal(0, 0.3, k)
    d_len = tuned_len[:, None] - base_len[None, :]
    w = sigmoid(theta + 0.8 * d_len) + rng.normal(0, 0.04, (k, 1)) + rng.normal(0, 0.04, (1, k)) \
        + rng.normal(0, 0.03, (k, k))
    a, b = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    return np.clip(w, 0, 1).ravel(), d_len.ravel(), np.column_stack([a.ravel(), b.ravel()])


def fake_spmcmc(tmp_path, cfg, n=20, judge=None, prompts=("Tell me a joke.",), texts=None, columns=None):
    """A complete spmcmc artifact over `prompts` (n candidates each), written by the spmcmc stage's own
    `summarise` from a fake judge's answers to every ordered comparison within each prompt (default:
    Bradley–Terry on random weights), and its pair cache, so no model is loaded. `texts` and `columns`
    (n_tokens, sum_logprob, ...) replace the candidates' texts and add confound sources."""
    from datasets import Dataset

    from pipeline.artifacts import Artifact
    from pipeline.hashing import text_sha
    from pipeline.judge import PairStore, judge_key
    from pipeline.stages.spmcmc import plan, prompt_groups, summarise

    total = n * len(prompts)
    weight = np.concatenate([np.random.default_rng(k).dirichlet(np.ones(n)) for k in range(len(prompts))])
    texts = texts or [f"joke {i}" for i in range(total)]
    prompt_of = [i // n for i in range(total)]
    judge = judge or (lambda a, b: weight[a] / (weight[a] + weight[b]))
    pids = [f"p{k}" for k in range(len(prompts))]
    space = Dataset.from_dict({"id": list(range(total)), "prompt_id": [pids[k] for k in prompt_of],
                               "prompt": [prompts[k] for k in prompt_of], "text": texts, "count": [1] * total,
                               "is_greedy": [False] * total, "text_sha": [text_sha(t) for t in texts],
                               **(columns or {})})
    pairs = [(a, b) for a in range(total) for b in range(total) if a != b and prompt_of[a] == prompt_of[b]]
    probs = {p: float(judge(*p)) for p in pairs}
    folder = tmp_path / "spmcmc"
    folder.mkdir(parents=True, exist_ok=True)
    groups = prompt_groups(space)
    result = summarise(cfg, space, groups, plan(cfg.spmcmc, groups), None, probs, {}, folder)
    result.save_to_disk(str(folder / "dataset"), num_shards={k: 1 for k in result})  # 0-row splits need one shard
    store = PairStore(folder, [judge_key(cfg.model, cfg.judge, q) for q in prompts], [text_sha(t) for t in texts],
                      prompt_of)
    store.append(pairs, [probs[p] for p in pairs], [1.0] * len(pairs))
    return Artifact("spmcmc", "fp", folder)


# ------------------------------------------------------------------ the calibration runs (tests and scripts/calibrate.py)
def strength_coverage(sims: int, seed: int, n: int = 20) -> float:
    """Share of 95% intervals of the GLM's log-strengths that cover the truth (per-pair deviations, position bias)."""
    from pipeline import glm

    rng = np.random.default_rng(seed)
    _, _, s, _ = world(n, rng, quality_sd=0.3)
    inside = []
    for _ in range(sims):
        fit = glm.fit_strengths(pair_judge(s, rng), n)
        inside.append(np.abs(fit.s - s) < 1.96 * np.sqrt(np.diag(fit.cov)))
    return float(np.mean(inside))


def wald_size(sims: int, seed: int, position: float = POSITION, n: int = 20) -> float:
    """Share of 5% Wald tests of "no preference left" that reject for a judge exactly linear in the controlled
    confound, with per-pair deviations: the test's size."""
    from pipeline import glm

    rng = np.random.default_rng(seed)
    rejected = []
    for _ in range(sims):
        x, names, s, _ = world(n, rng)
        fit = glm.fit_strengths(pair_judge(s, rng, position=position), n)
        c = confounds.control(fit, x, names)
        rejected.append(confounds.wald_test(c.q, c.cov, fit.resid_df)["p"] < 0.05)
    return float(np.mean(rejected))


def gap_z_size(sims: int, seed: int, crossed: bool = True, n: int = N, top_fraction: float = 0.25) -> float:
    """Share of the top-vs-bottom pairs (the preferences stage's default selection) whose gap_z passes 1.645, a
    one-sided 5% test, for a judge with nothing left once length is controlled (linear in log length, per-pair
    deviations, position bias): gap_z's size as a test after the selection. crossed=False ranks and tests on every
    comparison, as the stage does where a prompt cannot be cross-fitted."""
    from math import ceil

    from pipeline import glm

    rng = np.random.default_rng(seed)
    passed = []
    for k in range(sims):
        x, names, s, _ = world(n, rng)
        probs = pair_judge(s, rng)
        if crossed:
            cf = confounds.cross_fit(probs, n, x, [seed, k])
            rank, test, cov = cf.rank, cf.test, cf.test_cov
        else:
            c = confounds.control(glm.fit_strengths(probs, n), x, names)
            rank, test, cov = c.q, c.q, c.cov
        order = np.argsort(-rank)
        q = ceil(top_fraction * n)
        passed += [confounds.pair_z(test, cov, a, b) >= 1.645 for a in order[:q] for b in order[-q:]]
    return float(np.mean(passed))


def controlled_strength_coverage(sims: int, seed: int, n: int = 20) -> tuple[float, float, float]:
    """(coverage of the controlled strength's interval, its level, the Wald test's power) for a planted quality
    under a length effect: the truth is mean |W - 1/2| of the true controlled strengths."""
    from pipeline import glm

    rng = np.random.default_rng(seed)
    x, names, s, q = world(n, rng, quality_sd=0.3)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    a, b = np.array(pairs).T
    inside, rejected, level = [], [], None
    for _ in range(sims):
        fit = glm.fit_strengths(pair_judge(s, rng), n)
        c = confounds.control(fit, x, names)
        st = confounds.strength(c.q, c.cov, fit.position, pairs, fit.resid_df)
        truth = np.mean(np.abs(confounds.order_averaged_w(q[a] - q[b], fit.position) - 0.5))
        inside.append(st["ci_low"] <= truth <= st["ci_high"])
        rejected.append(st["p"] < 0.05)
        level = st["level"]
    return float(np.mean(inside)), level, float(np.mean(rejected))


def controlled_pairs(workdir, kind: str, seed: int) -> tuple[list, set, np.ndarray]:
    """The real preferences stage under control (confounds.control=[length]) on a prompt set judged by
    prompt_set_judge(kind): (kept pairs (chosen, rejected), the prompts that gave pairs, the planted quality).
    A stage that refuses (no prompt has a preference left) gives no pairs."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.stages import preferences

    workdir = Path(workdir)
    texts, judge, quality = prompt_set_judge(kind, seed)
    cfg = load_config(["recipe=tiny", f"output_dir={workdir}", "confounds.control=[length]", "preferences.control=true",
                       "preferences.min_confidence=0.51", "preferences.test_fraction=0", "preferences.split=candidate"])
    (workdir / "work").mkdir(parents=True, exist_ok=True)
    spmcmc = fake_spmcmc(workdir, cfg, n=N, judge=judge, prompts=[f"prompt {k}" for k in range(P)], texts=texts)
    try:
        out = preferences.run(cfg, {"spmcmc": spmcmc}, workdir / "work")
    except preferences.NoPairs as e:
        if "no preference left once length" not in str(e):
            raise
        return [], set(), quality
    train = out["train"]
    return list(zip(train["chosen_id"], train["rejected_id"])), set(train["prompt_id"]), quality


def ceiling_bias(sims: int, seed: int, quality_sd: float, reps: int = 200_000) -> tuple[float, float]:
    """(the mean best-of-8 ceiling estimate over `sims` prompts of 9 reference and 9 null answers, the truth): the
    truth by simulating the policy itself, 8 fresh base answers, the judge's pick among them by W against 9 null
    answers, its W against one more base answer."""
    from pipeline.winrate import prompt_figures

    rng = np.random.default_rng(seed)
    pool = {"text": [f"a{i}" for i in range(9)], "weight": np.ones(9), "logp": np.zeros(9)}
    estimates = []
    for _ in range(sims):
        w_pool, w_fresh = yardstick_world(rng, quality_sd, 9)
        estimates.append(prompt_figures(pool, w_pool, np.zeros((1, 9)), w_fresh, draws=8)["ceiling_8"])
    cand, null, other = (rng.normal(0, quality_sd, (reps, 8)), rng.normal(0, quality_sd, (reps, 9)),
                         rng.normal(0, quality_sd, reps))
    pick_score = order_averaged(cand[:, :, None] - null[:, None, :] + rng.normal(0, 0.5, (reps, 8, 9))).mean(2)
    best = cand[np.arange(reps), pick_score.argmax(1)]
    return float(np.mean(estimates)), float(order_averaged(best - other + rng.normal(0, 0.5, reps)).mean())


def lc_coverage(sims: int, seed: int, prompts: int = 10, theta: float = 0.2) -> tuple[float, float]:
    """(coverage over `prompts` prompts, coverage for one query) of the length-controlled win rate's 95% interval."""
    from pipeline.metrics import mean_ci_t
    from pipeline.winrate import length_controlled

    rng = np.random.default_rng(seed)
    over_prompts, one_query = [], []
    for _ in range(sims):
        per = []
        for _ in range(prompts):
            w, d_len, _ = lc_cells(rng, theta + rng.normal(0, 0.05))
            per.append(length_controlled(w, d_len, np.zeros_like(d_len))["mean"])
        ci = mean_ci_t(per)
        over_prompts.append(ci["ci_low"] <= sigmoid(theta) <= ci["ci_high"])
        w, d_len, clusters = lc_cells(rng, theta)
        one = length_controlled(w, d_len, np.zeros_like(d_len), clusters)
        one_query.append(one["ci_low"] <= sigmoid(theta) <= one["ci_high"])
    return float(np.mean(over_prompts)), float(np.mean(one_query))
