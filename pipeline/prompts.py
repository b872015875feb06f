"""The prompt set a run answers: `sample_space.query` (a set of one) or `sample_space.prompts` (a file
with a `prompt` column and an optional `id`, or an inline list). Every dataset downstream carries
`prompt_id`: the given id, or the hash of the prompt's text (stable across runs and machines)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from pipeline.config import SampleSpaceConfig, UserError
from pipeline.hashing import text_sha
from pipeline.tables import TableError, read_table


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts(sc: SampleSpaceConfig) -> list[Prompt]:
    if sc.query is not None:
        return [Prompt(text_sha(sc.query), sc.query)]
    if isinstance(sc.prompts, list):
        return _checked([(None, p) for p in sc.prompts], "sample_space.prompts")
    frame = read_table(sc.prompts, ["prompt"], "sample_space.prompts", text=("prompt", "id"))
    ids = frame["id"].tolist() if "id" in frame.columns else [None] * len(frame)
    return _checked(list(zip(ids, frame["prompt"].tolist())), f"sample_space.prompts file {sc.prompts!r}")


def _checked(rows: list[tuple], where: str) -> list[Prompt]:
    if not rows:
        raise TableError(f"{where} holds no prompts")
    prompts, seen_text, seen_id = [], {}, {}
    for k, (given, text) in enumerate(rows, start=1):
        if _missing(text) or (isinstance(text, str) and not text.strip()):
            raise TableError(f"{where}: prompt {k} is empty; every prompt needs text")
        if not isinstance(text, str):
            raise TableError(f"{where}: prompt {k} is {type(text).__name__} {text!r}, not text; write prompts as text")
        if text in seen_text:
            raise TableError(f"{where}: prompt {k} repeats prompt {seen_text[text]} ({text[:60]!r}); give each prompt once")
        pid = _given_id(given, k, where) or text_sha(text)
        if pid in seen_id:
            raise TableError(f"{where}: id {pid!r} is used by prompts {seen_id[pid]} and {k}")
        seen_text[text], seen_id[pid] = k, k
        prompts.append(Prompt(pid, text))
    return prompts


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _given_id(given, k: int, where: str) -> str | None:
    """The file's id as text, whatever the format stored: 7 in JSONL or parquet is "7", as in a CSV (an
    integral float, 7.0, is what pandas makes of an integer column with a gap); None when blank."""
    if _missing(given) or (isinstance(given, str) and not given.strip()):
        return None
    if isinstance(given, str):
        return given.strip()
    if isinstance(given, numbers.Integral) and not isinstance(given, bool):
        return str(int(given))
    if isinstance(given, numbers.Real) and not isinstance(given, bool) and float(given).is_integer():
        return str(int(given))
    raise TableError(f"{where}: prompt {k} has id {given!r} ({type(given).__name__}); an id is text or a whole number")


def check_lengths(cfg) -> None:
    """Before any work: every prompt, chat-templated, leaves room for an answer of sample_space.max_new_tokens
    within the model's context, in the judge's prompt (with two such answers, when the policy judges) and,
    when finetune runs, within finetune.max_length. One line names the prompt and what to change."""
    from pipeline.judge import judge_is_policy, prompt_segments
    from pipeline.models import chat_prompt, context_length, load_tokenizer, resolve_model_path

    sc = cfg.sample_space
    if sc.only_extra:
        return  # nothing is generated; answers are scored at their own length
    path = resolve_model_path(cfg.model)
    tok, context = load_tokenizer(path, cfg.model), context_length(path, cfg.model)
    size = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    for k, p in enumerate(load_prompts(sc), start=1):
        name = f"prompt {k} ({p.id}, {p.text[:40]!r}...)" if len(p.text) > 40 else f"prompt {k} ({p.text!r})"
        n = size(chat_prompt(tok, p.text, sc.system_prompt))
        if context and n + sc.max_new_tokens > context:
            raise UserError(f"{name} is {n} tokens with the chat template; with sample_space.max_new_tokens="
                            f"{sc.max_new_tokens} it exceeds the model's context of {context} tokens: shorten it")
        if context and judge_is_policy(cfg.judge) and "spmcmc" in cfg.stages:
            judge = sum(size(s) for s in prompt_segments(tok, cfg.judge, p.text)) + 2 * sc.max_new_tokens
            if judge > context:
                raise UserError(f"{name}: the judge's prompt with two answers of up to sample_space.max_new_tokens="
                                f"{sc.max_new_tokens} tokens is {judge} tokens, beyond the model's context of {context}: "
                                "shorten the prompt or lower sample_space.max_new_tokens")
        if "finetune" in cfg.stages and n >= cfg.finetune.max_length:
            raise UserError(f"{name} is {n} tokens with the chat template, so finetune.max_length="
                            f"{cfg.finetune.max_length} leaves no room for answers: raise it or shorten the prompt")
