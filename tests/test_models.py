"""pipeline/models.py: damaged model folders and models that ship their own code (one line, nothing run),
and answer scoring whose memory does not grow with the prompt."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, assert_one_error_line, run_main, write
from pipeline.models import SCORING_BYTES, answer_scores, chat_prompt, padded, scoring_batches

PEAK = """
import resource
from pipeline.config import ModelConfig
from pipeline.models import answer_scores, chat_prompt, load_model

model, tok = load_model(ModelConfig(name_or_path="embedded:tiny-random"))
answers = [f"Joke number {k} about cats and dogs." for k in range(16)]
answer_scores(model, tok, chat_prompt(tok, "Tell me a joke."), answers[:2])  # allocator warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
long = chat_prompt(tok, "Tell me a joke about " + " ".join(["cats and dogs and birds"] * 370) + ".")
scores = answer_scores(model, tok, long, answers, batch_size=16)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(tok(long, add_special_tokens=False).input_ids), (peak - before) * 1024, len(scores))
"""


@pytest.mark.slow
def test_scoring_a_long_prompt_stays_within_its_memory_bound():
    """A 1,886-token prompt and 16 answers on the tiny model (vocabulary 49,152): full float32 logits with their
    log-softmax took 17 GB more (measured 2026-12-03, docs/PERFORMANCE.md); answer positions only, in batches
    bounded by SCORING_BYTES, take what the bound allows plus the model's own activations."""
    proc = subprocess.run([sys.executable, "-c", PEAK], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens, growth, n = map(int, proc.stdout.split())
    assert tokens > 1800 and n == 16
    assert growth < SCORING_BYTES + (256 << 20), f"peak memory grew by {growth / 2**20:.0f} MiB"


def test_scoring_batches_hold_the_bound():
    vocab = 49152
    lengths = [30, 40, 50, 2000, 2100, 35]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = scoring_batches(order, lengths, 20, vocab, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b) - 20
        assert len(b) == 1 or len(b) * width * vocab * 12 <= SCORING_BYTES
    assert [len(b) for b in scoring_batches(order, lengths, 20, 100, 3)] == [3, 3]  # a small vocabulary: batch_size


def broken_model(tmp_path, tiny_model_dir, config_text):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    write(copy / "config.json", config_text)
    return [f"model.name_or_path={copy}"]


@pytest.mark.parametrize("text, message", [("{not json", "config.json is not valid JSON"),
                                           ("{}", "config.json has no model_type")])
def test_damaged_model_folder(tmp_path, tiny_model_dir, text, message):
    args = broken_model(tmp_path, tiny_model_dir, text)
    assert_one_error_line(run_main(*TINY, f"output_dir={tmp_path / 'out'}", *args), message)


def custom_code_model(tmp_path, tiny_model_dir) -> Path:
    """A model folder whose classes exist only as code in it; that code would leave a marker file if it ran."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="spmcmc_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                          "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    write(folder / "config.json", json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        write(folder / name, f"open({str(tmp_path / 'code_ran')!r}, 'w').write('ran')\n")
    return folder


def test_a_model_that_needs_its_own_code_is_one_line(tmp_path, tiny_model_dir):
    folder = custom_code_model(tmp_path, tiny_model_dir)
    proc = run_main(*TINY, f"output_dir={tmp_path / 'out'}", f"model.name_or_path={folder}")
    assert_one_error_line(proc, "ships its own Python code, which runs only with model.trust_remote_code=true")
    assert not (tmp_path / "code_ran").exists() and not (tmp_path / "out" / "sample_space").exists()


def test_an_answer_cut_off_at_max_new_tokens_is_scored_without_an_end_of_turn(tiny_model):
    """The KL's samples: a truncated answer never ended, so its log-probability has no end-of-turn token."""
    model, tok = tiny_model
    prompt = chat_prompt(tok, "Tell me a joke.")
    ended, cut = answer_scores(model, tok, prompt, ["Why did the chicken", "Why did the chicken"],
                               finished=[True, False])
    assert cut[0] > ended[0]  # one log-probability (<= 0) fewer
    assert answer_scores(model, tok, prompt, ["Why did the chicken"])[0] == pytest.approx(ended)


def test_self_certainty_is_the_mean_kl_from_uniform_over_the_answers_positions(tiny_model):
    """KL(U || p) = -log V - mean_v log p(v), averaged over the positions that predict the answer's tokens and its
    end of turn, from one forward pass of prompt + answer; the sum of log-probabilities from the same pass."""
    import math

    import torch

    model, tok = tiny_model
    prompt = chat_prompt(tok, "Tell me a joke.")
    answer = "Why did the chicken cross the road?"
    p_ids, a_ids = tok(prompt, add_special_tokens=False).input_ids, tok(answer, add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + a_ids + [tok.eos_token_id]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)[len(p_ids) - 1:-1]
    vocab = model.config.vocab_size
    expected = float((-math.log(vocab) - logp.mean(-1)).mean())
    total, mean, certainty = answer_scores(model, tok, prompt, [answer, "Knock knock."])[0]
    # certainty is a small difference of two numbers near log V = 10.8, where float32's resolution is ~1e-6: the
    # stage reads it as logsumexp - mean logit, this test as a mean of log-softmax, equal to that resolution
    assert certainty == pytest.approx(expected, abs=1e-6) and certainty > 1e-3
    assert total == pytest.approx(float(logp.gather(-1, ids[0, len(p_ids):, None])[:, 0].sum()), rel=1e-5)
    assert mean == pytest.approx(total / (len(a_ids) + 1), rel=1e-6)


def test_the_tokenizer_is_read_once_per_folder_and_each_caller_gets_its_own(tiny_model_dir, tmp_path):
    from pipeline.config import ModelConfig
    from pipeline.models import _read_tokenizer, load_tokenizer

    folder, mcfg = tmp_path / "model", ModelConfig(name_or_path="embedded:tiny-random")
    shutil.copytree(tiny_model_dir, folder)
    first = load_tokenizer(folder, mcfg)
    reads = _read_tokenizer.cache_info().misses
    second = load_tokenizer(folder, mcfg)
    assert _read_tokenizer.cache_info().misses == reads  # from memory
    first.padding_side, first.pad_token = "right", "<|im_start|>"  # what a trainer may do to its copy
    assert (second.padding_side, second.pad_token) == ("left", second.eos_token)
    # the copies share the Rust tokenizer: padding one way through the first leaves the second's batches as they were
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(str(folder))
    fresh.padding_side, fresh.pad_token = "left", fresh.eos_token
    texts = ["Why?", "Why did the chicken cross the road?"]
    right = first(texts, padding=True)["input_ids"]
    assert right[0][-1] == first.convert_tokens_to_ids("<|im_start|>")
    assert second(texts, padding=True)["input_ids"] == fresh(texts, padding=True)["input_ids"] != right
    assert load_tokenizer(folder, mcfg).padding_side == "left"
    config = folder / "tokenizer_config.json"  # rewritten in place: read again
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 77}))
    assert load_tokenizer(folder, mcfg).model_max_length == 77 and _read_tokenizer.cache_info().misses == reads + 1


@pytest.mark.parametrize("left", [False, True])
def test_padded_places_each_row_and_its_mask(left):
    """Right padding leaves each row at the start, left padding at the end; the mask marks its cells, an empty
    row has none, and the pads carry pad_id."""
    rows, pad = [[5, 6, 7], [], [8], [1, 2, 3, 4, 9]], 0
    ids, mask = padded(rows, pad, left=left)
    assert ids.shape == mask.shape == (4, 5) and str(ids.dtype) == str(mask.dtype) == "torch.int64"
    for r, row in enumerate(rows):
        cells = list(range(5 - len(row), 5)) if left else list(range(len(row)))
        assert ids[r, cells].tolist() == row and mask[r].nonzero().flatten().tolist() == cells
        assert ids[r][mask[r] == 0].tolist() == [pad] * (5 - len(row))
