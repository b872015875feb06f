"""pipeline/judge.py: the model as a pairwise judge; its prefix cache gives what a plain forward pass does."""

import numpy as np
import pytest

from pipeline.config import JudgeConfig
from pipeline.judge import ModelJudge
from pipeline.models import ModelError


def test_prefix_cache_matches_plain_forward(tiny_model):
    model, tok = tiny_model
    texts = ["Why did the chicken cross the road?", "Knock knock.", "A horse walks into a bar.", "Puns."]
    first, second = np.array([0, 0, 0, 1, 2, 3]), np.array([1, 2, 3, 0, 0, 2])
    cached = ModelJudge(model, tok, JudgeConfig(batch_size=2), "Tell me a joke.", texts)(first, second)
    plain_judge = ModelJudge(model, tok, JudgeConfig(prefix_cache=False), "Tell me a joke.", texts)
    plain = plain_judge(first, second)
    assert np.allclose(cached, plain, atol=1e-5)
    assert ((plain_judge.last_mass > 0) & (plain_judge.last_mass <= 1)).all()


def test_temperature_sharpens_choices(tiny_model):
    model, tok = tiny_model
    texts = ["one joke", "another joke"]
    f, s = np.array([0, 1]), np.array([1, 0])
    p1 = ModelJudge(model, tok, JudgeConfig(), "q", texts)(f, s)
    p_cold = ModelJudge(model, tok, JudgeConfig(temperature=0.25), "q", texts)(f, s)
    assert (np.abs(p_cold - 0.5) >= np.abs(p1 - 0.5) - 1e-9).all()


def test_multi_token_label_is_refused(tiny_model):
    model, tok = tiny_model
    with pytest.raises(ModelError, match="judge label 'Response A' is 2 tokens"):
        ModelJudge(model, tok, JudgeConfig(labels=["Response A", "B"]), "q", ["a", "b"])


@pytest.mark.parametrize("limit_mb", [1024, 0])
def test_row_prefixes_kept_between_calls_give_the_same_choices(tiny_model, limit_mb):
    """Rounds of one comparison per first answer, as the active design and the chains ask: the rows' key/values
    kept from earlier calls (or evicted at once with 0 MB) give what a plain forward pass does."""
    model, tok = tiny_model
    texts = ["Why did the chicken cross the road?", "Knock knock.", "A horse walks into a bar.", "Puns.", "Ha."]
    judge = ModelJudge(model, tok, JudgeConfig(batch_size=2, prefix_cache_mb=limit_mb), "Tell me a joke.", texts)
    plain = ModelJudge(model, tok, JudgeConfig(prefix_cache=False), "Tell me a joke.", texts)
    rounds = [([0, 1, 2], [1, 2, 3]), ([1, 2, 4, 0], [0, 4, 3, 2]), ([3, 0], [4, 1])]
    for first, second in rounds:
        assert np.allclose(judge(np.array(first), np.array(second)), plain(np.array(first), np.array(second)), atol=1e-5)
    assert (len(judge._row_kv) == 5) if limit_mb else (judge._row_bytes == 0 and not judge._row_kv)
    if limit_mb:  # all but the last row used (0) out: row 1's group is computed again, and row 0 counted once
        judge._evict(sum(t.numel() * t.element_size() for pair in judge._row_kv[0][0] for t in pair))
        assert list(judge._row_kv) == [0]
        assert np.allclose(judge(np.array([1, 0]), np.array([3, 2])), plain(np.array([1, 0]), np.array([3, 2])), atol=1e-5)
        assert list(judge._row_kv) == [1, 0]
        assert judge._row_bytes == sum(t.numel() * t.element_size() for kv, _ in judge._row_kv.values()
                                       for pair in kv for t in pair)
    tokens = judge.tokens
    judge(np.array([0, 1]), np.array([2, 3]))  # with rows kept, only the second answers and the tail run
    suffixes = len(judge.cands[2]) + len(judge.cands[3]) + 2 * len(judge.tails[0])
    rows = len(judge.cands[0]) + len(judge.cands[1]) + 2 * len(judge.mids[0])  # nothing kept: rows 0 and 1 again
    assert judge.tokens - tokens == (suffixes if limit_mb else suffixes + rows)

    judge.reset()  # what the benchmarks time from
    assert not judge._row_kv and not judge._head_kv and judge._row_bytes == 0 and judge.tokens == 0
