"""What a judge's preference tracks, and the controlled preference: the GLM against known generating models,
and the spmcmc stage's own reporting on fake judges whose preference is known."""

import json

import numpy as np
import pytest
from datasets import Dataset

from conftest import tiny_config
from pipeline import confounds, glm
from pipeline.stages.spmcmc import plan, prompt_groups, summarise


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def simulated(n, s, c, noise, seed):
    """Every ordered comparison of a judge with strengths s and position bias c, each reading off its mean
    sigmoid(c + s_i - s_j) by independent noise of variance noise^2 mu (1 - mu) (the quasi-binomial model)."""
    eps = np.random.default_rng(seed).normal(0, noise, size=(n, n))
    out = {}
    for i in range(n):
        for j in range(n):
            if i != j:
                mu = sigmoid(c + s[i] - s[j])
                out[i, j] = float(np.clip(mu + eps[i, j] * np.sqrt(mu * (1 - mu)), 0, 1))
    return out


def test_glm_recovers_strengths_position_and_honest_standard_errors():
    n, c = 30, 1.5
    s = np.random.default_rng(0).normal(0, 0.6, size=n)
    s -= s.mean()
    inside, fits = [], []
    for seed in range(20):
        fit = glm.fit_strengths(simulated(n, s, c, 0.15, seed), n)
        se = np.sqrt(np.diag(fit.cov))
        inside.append(np.abs(fit.s - s) < 1.96 * se)
        fits.append(fit)
    assert all(abs(f.position - c) < 0.05 for f in fits)
    assert all(np.corrcoef(f.s, s)[0, 1] > 0.98 for f in fits)
    assert 0.90 <= np.mean(inside) <= 0.99  # 95% intervals cover the true strengths about 95% of the time
    quiet = glm.fit_strengths(simulated(n, s, c, 0.015, 0), n)
    assert np.sqrt(np.diag(quiet.cov)).mean() < np.sqrt(np.diag(fits[0].cov)).mean() / 5  # SE follows the noise


def test_control_recovers_the_confound_coefficient_and_leaves_what_it_cannot_explain():
    n = 60
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 2))
    quality = rng.normal(0, 0.5, size=n)
    s = 0.8 * x[:, 0] - 0.3 * x[:, 1] + quality
    fit = glm.fit_strengths(simulated(n, s - s.mean(), 1.0, 0.2, 2), n)
    xs = (x - x.mean(0)) / x.std(0)
    c = confounds.control(fit, xs, ["a", "b"])
    truth = np.array([0.8, -0.3]) * x.std(0)  # per SD
    assert np.all(np.abs(c.beta - truth) < 3 * c.beta_se)
    assert abs(np.corrcoef(c.q, quality)[0, 1]) > 0.9
    assert np.allclose(xs.T @ c.q, 0, atol=1e-6)  # the controlled strengths carry nothing the confounds predict
    assert 0.6 < c.r2 < 0.95


def stage_summary(tmp_path, lengths, logit, *overrides, n_tokens=None, sum_logprob=None):
    """The spmcmc stage's summary and candidates for candidates of the given lengths judged by `logit(first, second)`."""
    n = len(lengths)
    texts = [("ha" * 200)[:L - 3] + f"{i:03d}" for i, L in enumerate(lengths)]
    columns = {"n_tokens": n_tokens or [max(1, L // 4) for L in lengths],
               "sum_logprob": sum_logprob or list(-0.8 * np.array(lengths, float))}
    space = Dataset.from_dict({"id": list(range(n)), "prompt_id": ["q"] * n, "prompt": ["Tell me a joke."] * n,
                               "text": texts, "count": [1] * n, "is_greedy": [i == 0 for i in range(n)],
                               "text_sha": [str(i) for i in range(n)], "mean_logprob": [-0.8] * n, **columns})
    probs = {(i, j): float(sigmoid(logit(i, j))) for i in range(n) for j in range(n) if i != j}
    cfg = tiny_config(tmp_path, "spmcmc.chains=false", *overrides)
    groups = prompt_groups(space)
    out = summarise(cfg, space, groups, plan(cfg.spmcmc, groups), None, probs, {}, tmp_path)
    return json.loads((tmp_path / "summary.json").read_text()), out["candidates"]


def test_a_judge_that_prefers_only_short_answers_leaves_no_controlled_preference(tmp_path):
    n = 40
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 300, size=n)
    eps = rng.normal(0, 0.3, size=(n, n))  # readings disagree: each comparison its own noise
    summary, cands = stage_summary(tmp_path, lengths, lambda i, j: 1.5 - 1.2 * (np.log(lengths[i]) - np.log(lengths[j]))
                                   + eps[i, j], "confounds.control=[length]")
    conf = summary["confounds"]
    assert conf["features"]["length"]["spearman"] < -0.9 and conf["explained"]["r2_adjusted"] > 0.9
    raw, ctrl = conf["raw_strength"], conf["controlled"]
    assert raw["ci_low"] > 0.1  # the raw preference is strong: it is all length
    assert ctrl["strength"]["ci_low"] == 0.0  # nothing left: the interval reaches 0
    assert ctrl["strength"]["mean_abs_w_minus_half"] < 0.1 * raw["mean_abs_w_minus_half"]
    assert ctrl["strength"]["p"] > 0.05
    assert any("the confounds explain" in w and "length" in w for w in summary["warnings"])
    assert None not in cands["controlled"] and sum(cands["controlled"]) == pytest.approx(1.0)


def test_a_planted_quality_under_a_length_bias_is_recovered_by_the_controlled_score(tmp_path):
    n = 40
    rng = np.random.default_rng(4)
    lengths = rng.integers(20, 300, size=n)
    quality = rng.normal(0, 1.0, size=n)
    bias = -3.0 * (np.log(lengths) - np.log(lengths).mean()) / np.log(lengths).std()
    eps = rng.normal(0, 0.2, size=(n, n))
    summary, cands = stage_summary(tmp_path, lengths, lambda i, j: 1.0 + quality[i] - quality[j] + bias[i] - bias[j]
                                   + eps[i, j], "confounds.control=[length]")
    from scipy.stats import spearmanr

    assert spearmanr(cands["score"], quality).statistic < 0.6  # the raw score mostly tracks length
    assert spearmanr(cands["controlled"], quality).statistic >= 0.9
    ctrl = summary["confounds"]["controlled"]
    assert ctrl["strength"]["ci_low"] > 0 and ctrl["strength"]["p"] < 1e-6 and ctrl["consistency"]["consistency"] > 0.9


def test_no_warning_when_the_confounds_explain_little(tmp_path):
    n = 30
    rng = np.random.default_rng(5)
    lengths = rng.integers(20, 300, size=n)
    quality = rng.normal(0, 1.0, size=n)
    summary, _ = stage_summary(tmp_path, lengths, lambda i, j: quality[i] - quality[j])
    assert not any("the confounds explain" in w for w in summary["warnings"])
    assert summary["confounds"]["controlled"]["control"] == ["length", "logprob"]


def test_format_features_and_spearman_intervals():
    feats = confounds.candidate_features(["Why?", "Because.", "Who?", "Nobody knows", "What?"],
                                         formats=["question=[?]$"])
    assert feats["question"].tolist() == [1, 0, 1, 0, 1] and set(feats) == {"length", "question"}
    r = confounds.spearman_ci(np.arange(20), np.arange(20) + np.random.default_rng(0).normal(0, 3, 20))
    assert r["ci_low"] < r["spearman"] < r["ci_high"] and 0 < r["p"] < 0.05
    assert confounds.spearman_ci([1, 1, 1, 1, 1], [1, 2, 3, 4, 5])["spearman"] is None
    # every confound at once (one spearmanr over the stacked columns): each as scipy gives it alone
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    score = rng.normal(size=12)
    ys = {"noise": rng.normal(size=12), "ties": np.round(score * 2), "constant": np.ones(12), "same": 3 * score,
          "reversed": -score}
    both = confounds.spearman_cis(score, ys)
    for name in ("noise", "ties", "same", "reversed"):
        alone = spearmanr(score, ys[name])
        assert both[name]["spearman"] == pytest.approx(alone.statistic, abs=1e-12)
        assert both[name]["p"] == pytest.approx(alone.pvalue, rel=1e-9)
    assert both["constant"]["spearman"] is None


@pytest.mark.parametrize("n", [8, 30])
def test_the_spearman_interval_covers_the_population_spearman_at_its_level(n):
    """spearman_ci's 95% interval (Fisher z, Bonett-Wright variance) covers the population Spearman of a bivariate
    normal, (6 / pi) asin(r / 2), about 95% of the time at 8 answers (the default sample) and 30, with and without
    an association. It is an approximation: the bounds allow its known slack, not a gross miss."""
    rng = np.random.default_rng(n)
    for r in (0.0, 0.6):
        truth = 6 / np.pi * np.arcsin(r / 2)
        xy = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=(2000, n))
        hits = [(c := confounds.spearman_ci(x, y))["ci_low"] <= truth <= c["ci_high"] for x, y in
                zip(xy[..., 0], xy[..., 1])]
        assert 0.93 <= np.mean(hits) <= 0.985, (n, r, np.mean(hits))


def test_the_glm_equals_statsmodels():
    """fit_strengths is statsmodels' GLM(Binomial).fit(scale="X2") on the dense design, fitted faster."""
    import statsmodels.api as sm
    from scipy.linalg import null_space

    n = 12
    s = np.random.default_rng(6).normal(0, 0.7, size=n)
    probs = simulated(n, s - s.mean(), 0.8, 0.2, 7)
    del probs[0, 1], probs[3, 2]  # some pairs in one order only
    keys = np.array(list(probs))
    basis = null_space(np.ones((1, n)))
    design = np.column_stack([np.ones(len(keys)), basis[keys[:, 0]] - basis[keys[:, 1]]])
    ref = sm.GLM(np.array(list(probs.values())), design, family=sm.families.Binomial()).fit(scale="X2")
    fit = glm.fit_strengths(probs, n)
    assert fit.position == pytest.approx(ref.params[0], abs=1e-8)
    assert np.allclose(fit.s, basis @ ref.params[1:], atol=1e-8)
    assert fit.dispersion == pytest.approx(ref.scale, rel=1e-8)
    # the covariance takes its dispersion from the pairs (both orders together, tests/test_calibration.py); with
    # readings independent per order, as here, it estimates what statsmodels' row-level quasi-likelihood does
    quasi = basis @ np.asarray(ref.cov_params())[1:, 1:] @ basis.T
    assert 0.6 < np.trace(fit.cov) / np.trace(quasi) < 1.6
    assert np.corrcoef(np.diag(fit.cov), np.diag(quasi))[0, 1] > 0.95


def test_the_stacked_subset_fits_equal_one_fit_per_subset():
    """strengths_on_subsets (split-half consistency's 20 fits at once) gives each subset's fit_strengths s: halves,
    a subset whose graph falls apart (the least-squares step), and one with too few comparisons (zeros)."""
    n = 8
    s = np.random.default_rng(8).normal(0, 0.7, size=n)
    probs = simulated(n, s - s.mean(), 0.8, 0.3, 9)
    keys = list(probs)
    masks = np.random.default_rng(10).random((6, len(keys))) < 0.5
    masks[4] = [max(k) < 4 or min(k) >= 4 for k in keys]  # two components: {0..3} and {4..7}, never compared across
    masks[5] = False
    masks[5, :n] = True  # n comparisons: fewer than the n + 1 parameters
    got = glm.strengths_on_subsets(probs, n, masks)
    for k, (row, mask) in enumerate(zip(got, masks)):
        fit = glm.fit_strengths({key: probs[key] for key, keep in zip(keys, mask) if keep}, n)
        want = fit.s if fit else np.zeros(n)
        if k == 4:  # the shift between the components is not identified: compare within each
            row, want = (np.concatenate([v[:4] - v[0], v[4:] - v[4]]) for v in (row, want))
        assert np.allclose(row, want, atol=1e-8)
    assert np.all(got[5] == 0) and np.ptp(got[4]) > 0


def test_pooled_r2_within_prompts_keeps_a_confound_constant_in_some_prompts():
    rng = np.random.default_rng(8)
    pools = []
    for k in range(6):
        n = 8
        length, question = rng.normal(size=n), (rng.random(n) < 0.5).astype(float) if k % 2 else np.zeros(n)
        feats = {"length": length, "question": question}
        x, names = confounds.standardised(feats, list(feats))
        s = x @ np.full(len(names), 0.5) + 5.0 * k  # prompts differ by a constant: centred away
        pools.append({"s": s, "x": x, "names": names})
    out = confounds.pooled_explained(pools)
    assert out["names"] == ["length", "question"] and out["r2"] > 0.99


def test_a_constant_format_feature_is_named_where_it_was_dropped(tmp_path, capsys):
    """A controlled format that matches no answer explains nothing and is dropped: the lines say which and why,
    never "controlled for :" with an empty list."""
    import json

    from conftest import tiny_config
    from pipeline.simulate import fake_spmcmc

    cfg = tiny_config(tmp_path, 'confounds.formats=["never=^zzzz_never$"]', "confounds.control=[never]")
    fake_spmcmc(tmp_path, cfg, n=12)
    out = capsys.readouterr().out
    assert "controlled for nothing (never dropped: the same for every answer, it explains nothing)" in out, out
    assert "controlled for :" not in out
    summary = json.loads((tmp_path / "spmcmc" / "summary.json").read_text())
    assert summary["confounds"]["controlled"]["constant"] == ["never"]
