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
