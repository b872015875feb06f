"""The prompt set a run answers: `sample_space.query` (a set of one) or `sample_space.prompts` (a file
with a `prompt` column and an optional `id`, or an inline list). Every dataset downstream carries
`prompt_id`: the given id, or the hash of the prompt's text (stable across runs and machines)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import SampleSpaceConfig
from pipeline.judge import text_sha
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
        if not isinstance(text, str) or not text.strip():
            raise TableError(f"{where}: prompt {k} is empty; every prompt needs text")
        if text in seen_text:
            raise TableError(f"{where}: prompt {k} repeats prompt {seen_text[text]} ({text[:60]!r}); give each prompt once")
        pid = str(given).strip() if isinstance(given, str) and given.strip() else text_sha(text)
        if pid in seen_id:
            raise TableError(f"{where}: id {pid!r} is used by prompts {seen_id[pid]} and {k}")
        seen_text[text], seen_id[pid] = k, k
        prompts.append(Prompt(pid, text))
    return prompts
