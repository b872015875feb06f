"""The sample_space stage (pipeline/stages/sample_space.py): normalisation, deduplication, the extra pool, and
resume from kills and damaged chunks."""

import json

import pytest
from datasets import load_from_disk

from conftest import TINY, dataset_files, run_cli, run_main, run_pipeline, stage_paths, tiny_config, write
from pipeline.config import SampleSpaceConfig
from pipeline.stages.sample_space import build_candidates, normalise

SPACE = [*TINY, "stages=[sample_space]"]
KILL = ["sample_space.chunk:2"]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8), (1.6, 0.95)])
def test_the_sampler_draws_from_the_distribution_transformers_samples_from(temperature, top_p):
    """generation.sampler leaves one token finite per row, drawn with the probabilities that transformers'
    temperature and nucleus warpers and softmax give: a chi-square fit over 60,000 draws holds, the nucleus'
    excluded tokens are never drawn, and the same fit rejects the untempered distribution (the test has power)."""
    import torch
    from scipy.stats import chisquare
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from pipeline.generation import sampler

    logits = torch.tensor([[2.0, 1.2, 0.9, 0.0, -0.5, -1.5, -3.0]]).expand(60_000, -1)
    reference = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
    probs = reference(None, logits.clone())[0].double().softmax(-1).numpy()
    torch.manual_seed(0)
    drawn = sampler(temperature, top_p)(None, logits.clone())
    assert (drawn == 0).sum(1).eq(1).all() and drawn.isinf().sum(1).eq(logits.shape[1] - 1).all()
    counts = torch.bincount(drawn.argmax(1), minlength=logits.shape[1]).double().numpy()
    kept = probs > 0
    assert counts[~kept].sum() == 0
    assert chisquare(counts[kept], len(logits) * probs[kept] / probs[kept].sum()).pvalue > 1e-3
    if temperature != 1.0:
        plain = logits[0].double().softmax(-1).numpy()
        assert chisquare(counts, len(logits) * plain).pvalue < 1e-6


def test_a_models_own_sampling_defaults_neither_leak_nor_warn():
    """A model whose generation_config.json sets its own sampling (Llama-3.1-Instruct: do_sample, temperature 0.6,
    top_p 0.9) samples with the stage's settings, and transformers logs nothing about flags greedy decoding
    ignores (generate fills unset flags from the model's file)."""
    import logging
    from types import SimpleNamespace

    from pipeline.config import ModelConfig
    from pipeline.generation import generate
    from pipeline.models import chat_prompt, load_model

    model, tok = load_model(ModelConfig(name_or_path="embedded:tiny-random"))
    model.generation_config.update(do_sample=True, temperature=0.05, top_p=0.9, top_k=1)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers.generation.configuration_utils")
    logger.addHandler(handler)
    try:
        sc_ = SimpleNamespace(temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=8)
        answers = generate(model, tok, [chat_prompt(tok, "Tell me a joke.")] * 8, sc_, True, 0)
    finally:
        logger.removeHandler(handler)
    assert len({a["text"] for a in answers}) > 4  # top_k=1 or T = 0.05 would make the 8 draws alike
    assert not [r.getMessage() for r in records if "not valid" in r.getMessage()]


def sc(**kw):
    return SampleSpaceConfig(query="q", **kw)


@pytest.mark.parametrize("raw, expected", [
    ("  Why did\n the chicken   cross? ", "Why did the chicken cross?"),
    ("Sure! Here's a joke: Why did the chicken cross the road?", "Why did the chicken cross the road?"),
    ('Here is one for you: "Knock knock."', "Knock knock."),
    ('"Quoted joke."', "Quoted joke."),
    ('"Doctor," he said, "it hurts."', '"Doctor," he said, "it hurts."'),  # inner quotes: keep
])
def test_normalise(raw, expected):
    assert normalise(raw, sc().preamble_patterns) == expected


def test_build_candidates_counts_dedups_and_marks():
    sampled = [{"text": "A joke here.", "finished": True}, {"text": "a JOKE here!", "finished": True},
               {"text": "Cut off mid", "finished": False}, {"text": "Other one.", "finished": True},
               {"text": "Other one.", "finished": True}, {"text": "Other one.", "finished": True}]
    greedy = {"text": "Sure! A joke here.", "finished": True}
    cands, stats = build_candidates(sampled, greedy, ["External joke.", "other one"], sc(min_chars=1))
    assert [c["text"] for c in cands] == ["Other one.", "A joke here.", "External joke."]
    assert [c["count"] for c in cands] == [3, 2, 0]
    assert [c["is_greedy"] for c in cands] == [False, True, False]
    assert [c["source"] for c in cands] == ["sampled", "sampled", "external"]
    assert stats["truncated"] == 1 and stats["unique"] == 3


def test_greedy_only_answer_is_added_with_zero_count():
    cands, _ = build_candidates([{"text": "x" * 20, "finished": True}], {"text": "y" * 20, "finished": False},
                                [], sc())
    assert [(c["count"], c["is_greedy"], c["source"]) for c in cands] == [(1, False, "sampled"), (0, True, "greedy")]


def test_truncated_kept_when_asked():
    cands, stats = build_candidates([{"text": "cut off here", "finished": False}], None, [],
                                    sc(drop_truncated=False))
    assert len(cands) == 1 and stats["truncated"] == 0


def test_stage_on_tiny_model(finished):
    out = finished(*TINY)  # the shared plain run: its sample space is this stage's own
    cfg = tiny_config(out, "stages=[sample_space]")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["stages"]["sample_space"]
    ds = load_from_disk(str(stage_paths(out)["sample_space"] / "dataset"))
    assert {"id", "text", "count", "mean_logprob", "sum_logprob", "is_greedy", "source"} <= set(ds.column_names)
    assert ds["id"] == list(range(len(ds)))
    greedy = json.loads((out / "sample_space" / entry["fingerprint"] / "summary.json").read_text())["greedy"]
    survives = bool(normalise(greedy, cfg.sample_space.preamble_patterns))  # the random model may emit only spaces
    assert sum(ds["is_greedy"]) == int(survives)
    assert sum(ds["count"]) <= cfg.sample_space.num_samples
    assert all(lp < 0 for lp in ds["sum_logprob"])


def test_extra_pool_only(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps({"text": t}) for t in ["One joke.", "Two jokes.", "one joke"]))
    cfg = tiny_config(tmp_path / "out", "stages=[sample_space]", f"sample_space.extra_path={pool}",
                      "sample_space.only_extra=true")
    run_pipeline(cfg)
    ds = load_from_disk(str(stage_paths(tmp_path / "out")["sample_space"] / "dataset"))
    assert ds["text"] == ["One joke.", "Two jokes."] and set(ds["source"]) == {"external"}


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, finished, killed):
    out = killed.copy(SPACE, KILL, tmp_path / "a")
    resumed = run_cli(*SPACE, f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr
    a, b = stage_paths(out)["sample_space"], stage_paths(finished(*TINY))["sample_space"]
    assert dataset_files(a) == dataset_files(b)
    log = [json.loads(line) for line in (a / "work_log.jsonl").read_text().splitlines()]
    assert sum(e["count"] for e in log if e["event"] == "generated_chunk") == 3  # 12 samples / 4 per chunk


@pytest.mark.slow
def test_damaged_generation_chunk_is_generated_again(tmp_path, finished, killed):
    out = killed.copy(SPACE, KILL, tmp_path / "a")
    chunk = next((out / "sample_space").glob("*.partial/_state/chunks/chunk_00000.json"))
    write(chunk, '[{"text": "cut')
    proc = run_main(*SPACE, f"output_dir={out}")
    assert proc.returncode == 0 and "chunk_00000.json is damaged" in proc.stdout
    assert dataset_files(stage_paths(out)["sample_space"]) == dataset_files(stage_paths(finished(*TINY))["sample_space"])


def test_texts_that_look_like_missing_values_are_kept(tmp_path):
    pool = write(tmp_path / "pool.csv", "text\nNone\nNA\nnan\nA real joke.\n")
    run_pipeline(tiny_config(tmp_path / "out", "stages=[sample_space]", f"sample_space.extra_path={pool}",
                             "sample_space.only_extra=true"))
    texts = load_from_disk(str(stage_paths(tmp_path / "out")["sample_space"] / "dataset"))["text"]
    assert texts == ["None", "NA", "nan", "A real joke."]
