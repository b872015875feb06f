"""Stage 4 — finetune: LoRA-DPO on the preference pairs (TRL DPOTrainer + PEFT), optionally after an
SFT warm-up on the SFT targets; QLoRA (bitsandbytes NF4) on CUDA. No second model is loaded: the
DPO reference is the base model with the adapter disabled.

Inputs:  preferences (train/test pairs, sft targets); in a later round either `init` (the previous round's
         finetune artifact: its adapter is trained further) or earlier_preferences_1, ... (earlier rounds'
         preferences: a fresh adapter trains on all rounds' pairs)
Output:  DatasetDict
           log:  step, epoch, loss, learning_rate, grad_norm, rewards_chosen, rewards_rejected,
                 rewards_margins, rewards_accuracies, logps_chosen, logps_rejected
           eval_log: step, epoch, eval_loss, eval_rewards_* (the test pairs, at most finetune.eval_pairs of
                 them, as TRL's eval_dataset, every finetune.eval_steps optimiser steps)
           test: chosen_id, rejected_id, base/tuned log-probabilities of chosen and rejected, reward_margin
         adapter/ (adapter, tokenizer, model card README.md), merged/ when finetune.merge=true,
         summary.json (held-out preference accuracy of the base and the tuned policy, per pair and per
         distinct text; whether the base already ranked every held-out pair right)
Resume:  Trainer checkpoints every `save_steps` optimiser steps in _state/; a killed run resumes
         from the last one (optimizer, scheduler, RNG and data order included).
Several processes: data-parallel training (DDP) under accelerate launch / torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np

from pipeline import parallel, tracking
from pipeline.artifacts import StageError, publish
from pipeline.config import Config
from pipeline.formatting import number
from pipeline.models import answer_scores, custom_code_guard, load_tokenizer, pick_dtype, resolve_model_path, setup_device
from pipeline.workdir import STATE_DIR, failpoint, log_work

NAME, VERSION = "finetune", 4  # 4: held-out log-probabilities as logit - logsumexp (models.answer_scores)
SETTINGS = ("model", "sample_space", "finetune")
OPTIONAL_INPUTS = ()
DISTRIBUTED = True
LOG_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "rewards/chosen", "rewards/rejected",
            "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
EVAL_KEYS = ("step", "epoch", "eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins",
             "eval_rewards/accuracies")


class DistinctTexts(TypedDict):
    chosen: int
    rejected: int


class Summary(TypedDict):
    """summary.json: what the report reads (the writer owns the shape; tests/test_contract.py checks it)."""
    train_pairs: int
    test_pairs: int
    optimizer_steps: int
    final_loss: float | None
    final_eval_loss: float | None
    final_eval_reward_accuracy: float | None
    eval_pairs: int  # the held-out pairs those two read (finetune.eval_pairs at most; 0: no curves)
    distinct_test_texts: DistinctTexts
    base_test_accuracy: float | None
    tuned_test_accuracy: float | None
    base_test_accuracy_per_chosen_text: float | None
    tuned_test_accuracy_per_chosen_text: float | None
    base_test_accuracy_per_rejected_text: float | None
    tuned_test_accuracy_per_rejected_text: float | None
    base_already_right: bool


ADAPTER_DIR = "adapter"  # the trained adapter inside the artifact: what later stages load


def adapter_of(inputs: dict, key: str):
    """(adapter folder, adapter key) of a finetune artifact among a stage's inputs, or (None, None): the base model."""
    art = inputs.get(key)
    return (art.path / ADAPTER_DIR, art.fingerprint) if art is not None else (None, None)


def precision_args(device: str) -> dict:
    """Never let TRL's bf16=True default reach a CPU: without native bf16 it ran DPO ~15x slower here."""
    import torch

    if device == "cpu":
        return {"bf16": False, "fp16": False, "use_cpu": True,
                "ddp_backend": "gloo" if parallel.world_size() > 1 else None}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def load_base(cfg: Config, path: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": pick_dtype(cfg.model, device), "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.finetune.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        kwargs["device_map"] = {"": parallel.state().local_process_index}  # not "auto": one GPU per process
    with custom_code_guard(cfg.model):
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def lora_config(cfg: Config):
    from peft import LoraConfig

    fc = cfg.finetune
    return LoraConfig(r=fc.lora_r, lora_alpha=fc.lora_alpha, lora_dropout=fc.lora_dropout,
                      target_modules=list(fc.target_modules), task_type="CAUSAL_LM")


def _callbacks(workdir: Path):
    from transformers import TrainerCallback

    class WorkLog(TrainerCallback):
        """Counts optimiser steps in the work log; the failpoint sits just after a checkpoint."""

        def on_step_end(self, args, state, control, **kw):
            if state.is_world_process_zero:
                log_work(workdir, "train_step", 1)

        def on_save(self, args, state, control, **kw):
            failpoint("finetune.save")

    return [WorkLog()]


def training_args(cfg: Config, out: Path, device: str, epochs: float) -> dict:
    fc = cfg.finetune
    return dict(output_dir=str(out), per_device_train_batch_size=fc.batch_size,
                gradient_accumulation_steps=fc.gradient_accumulation_steps, learning_rate=fc.learning_rate,
                num_train_epochs=epochs, max_length=fc.max_length, seed=fc.seed, data_seed=fc.seed,
                logging_steps=1, save_strategy="steps", save_steps=fc.save_steps, save_total_limit=2,
                report_to=["wandb"] if tracking.active() else "none", dataloader_num_workers=0,
                **no_checkpointing(), **precision_args(device))


def no_checkpointing() -> dict:
    """Activation checkpointing off (trades compute for memory; LoRA on these sizes does not need it), under the name
    the installed transformers reads: `activation_checkpointing` since 5.25, where `gradient_checkpointing` warns."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in names else {"gradient_checkpointing": False}


def _train(trainer, out: Path) -> None:
    last = last_complete_checkpoint(out)
    if last:
        print(f"[finetune] resuming from {last}", flush=True)
    trainer.train(resume_from_checkpoint=last)


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N in `out` that was written to the end: trainer_state.json readable and the adapter
    weights present. A save cut short (a full disk, a kill while writing) is set aside, said in one line, and the one
    before it used; the Trainer's own get_last_checkpoint would pick the cut one and fail on every resume."""
    import json
    import re
    import shutil

    found = sorted((int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            complete = any(path.glob("adapter_model.*")) or any(path.glob("model*.safetensors"))
        except (OSError, ValueError):
            complete = False
        if complete:
            return str(path)
        print(f"[finetune] {path.name} was not written to the end (a full disk or a kill while saving): removed, "
              "resuming from the one before", flush=True)
        shutil.rmtree(path, ignore_errors=True)  # else the Trainer's rotation and the next resume trip over it
    return None


def sft_warmup(cfg: Config, model, tok, sft, workdir: Path, device: str):
    """SFT on the SFT targets; returns the PeftModel that DPO continues from."""
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    done = workdir / STATE_DIR / "sft_adapter"
    if not (done / "adapter_config.json").is_file():
        out = workdir / STATE_DIR / "sft"
        args = SFTConfig(**training_args(cfg, out, device, cfg.finetune.sft_epochs))
        trainer = SFTTrainer(model, args=args, train_dataset=sft.select_columns(["prompt", "completion"]),
                             processing_class=tok, peft_config=lora_config(cfg), callbacks=_callbacks(workdir))
        _train(trainer, out)
        if parallel.is_main():
            trainer.model.save_pretrained(str(done))
        parallel.barrier()
        model = trainer.model.unload() if hasattr(trainer.model, "unload") else model
    return PeftModel.from_pretrained(model, str(done), is_trainable=True)


def run(cfg: Config, inputs: dict, workdir: Path):
    from trl import DPOConfig, DPOTrainer

    fc = cfg.finetune
    device = setup_device(cfg.model)
    if fc.quantization == "4bit" and device != "cuda":
        raise StageError("finetune.quantization=4bit (QLoRA, bitsandbytes) needs a CUDA GPU; "
                         "on CPU use finetune.quantization=none")
    prefs = inputs["preferences"].load()
    train = training_pairs(prefs, inputs)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.model)
    check_max_length(fc.max_length, tok, train["prompt"])
    model = load_base(cfg, path, device)
    check_target_modules(fc.target_modules, model, cfg.model.name_or_path)
    peft_config = lora_config(cfg)
    if "init" in inputs:  # a later round continues the previous round's adapter (the DPO reference stays the base)
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, str(adapter_of(inputs, "init")[0]), is_trainable=True), None
    if fc.sft_first and prefs["sft"].num_rows:
        model, peft_config = sft_warmup(cfg, model, tok, prefs["sft"], workdir, device), None
    out = workdir / STATE_DIR / "dpo"
    loss = list(fc.loss_type)
    held_out = prefs["test"].select_columns(["prompt", "chosen", "rejected"]) if fc.eval_steps else None
    if held_out is not None and held_out.num_rows > fc.eval_pairs:  # else evaluating grows with steps x pairs: P^2
        held_out = held_out.shuffle(seed=fc.seed).select(range(fc.eval_pairs))
    evaluation = ({"eval_strategy": "steps", "eval_steps": fc.eval_steps, "per_device_eval_batch_size": fc.batch_size}
                  if held_out is not None and held_out.num_rows else {})
    args = DPOConfig(**training_args(cfg, out, device, fc.num_epochs), beta=fc.beta, loss_type=loss,
                     loss_weights=[1.0] * len(loss) if len(loss) > 1 else None, **evaluation)
    trainer = DPOTrainer(model, args=args, train_dataset=train, eval_dataset=held_out if evaluation else None,
                         processing_class=tok, peft_config=peft_config, callbacks=_callbacks(workdir))
    _train(trainer, out)
    if not parallel.is_main():
        return None
    return _finish(cfg, trainer, tok, prefs, workdir, inputs["preferences"].fingerprint)


def training_pairs(prefs, inputs: dict):
    """This round's train pairs, and with rounds.init=base every earlier round's (inputs earlier_preferences_1, ...)."""
    from datasets import concatenate_datasets

    columns = ["prompt", "chosen", "rejected"]
    keys = sorted((k for k in inputs if k.startswith("earlier_preferences_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    earlier = [inputs[k].load()["train"].select_columns(columns) for k in keys]
    return concatenate_datasets([prefs["train"].select_columns(columns), *earlier])


def check_max_length(max_length: int, tok, prompts: list) -> None:
    """Every pair must keep answer tokens after its prompt, or TRL trains on nothing."""
    texts = {tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts}
    longest = max(len(tok(t, add_special_tokens=False).input_ids) for t in texts)
    if max_length <= longest:
        raise StageError(f"finetune.max_length={max_length} leaves no room for answers: the longest prompt is "
                         f"{longest} tokens; raise it well above that (e.g. {longest + 128})")


def check_target_modules(targets: list[str], model, name: str) -> None:
    """Each LoRA target must name modules of this model (PEFT matches a module name or its suffix)."""
    import torch

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if unknown:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise StageError(f"finetune.target_modules: {unknown} match no linear layer of {name}; its linear layers "
                         f"are {names}")


def held_out_logps(model, tok, test) -> dict:
    """Sum log-probabilities of chosen and rejected under the tuned policy and the base (adapter off)."""
    import contextlib

    # [:]: a datasets Column read whole; iterating one reads a row at a time
    prompts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in test["prompt"][:]]
    cols = {}
    for tag, ctx in (("base", model.disable_adapter), ("tuned", contextlib.nullcontext)):
        with ctx():
            for side in ("chosen", "rejected"):
                answers = [m[-1]["content"] for m in test[side][:]]
                cols[f"{tag}_logp_{side}"] = _scores_by_prompt(model, tok, prompts, answers)
    return cols


def _scores_by_prompt(model, tok, prompts: list[str], answers: list[str]) -> list[float]:
    out, rows_of = [0.0] * len(prompts), {}
    for i, p in enumerate(prompts):  # one pass: a scan of every row per prompt grows as prompts^2
        rows_of.setdefault(p, []).append(i)
    for prompt, rows in rows_of.items():  # usually one query: one batched call
        for i, s in zip(rows, answer_scores(model, tok, prompt, [answers[i] for i in rows])):
            out[i] = s[0]
    return out


def _finish(cfg: Config, trainer, tok, prefs, workdir: Path, data_fp: str):
    from datasets import Dataset, DatasetDict

    model = trainer.model
    model.eval()
    adapter = workdir / ADAPTER_DIR
    model.save_pretrained(str(adapter))
    tok.save_pretrained(str(adapter))
    test = prefs["test"]
    cols = held_out_logps(model, tok, test)
    c = {k: np.array(v) for k, v in cols.items()}
    margin = (c["tuned_logp_chosen"] - c["base_logp_chosen"]) - (c["tuned_logp_rejected"] - c["base_logp_rejected"])
    log = [{k.replace("/", "_"): e.get(k) for k in LOG_KEYS} for e in trainer.state.log_history if "loss" in e]
    evals = [{k.replace("/", "_"): e.get(k) for k in EVAL_KEYS} for e in trainer.state.log_history if "eval_loss" in e]
    summary = {"train_pairs": prefs["train"].num_rows, "test_pairs": test.num_rows,
               "optimizer_steps": trainer.state.global_step, "final_loss": log[-1]["loss"] if log else None,
               "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
               "final_eval_reward_accuracy": evals[-1]["eval_rewards_accuracies"] if evals else None,
               "eval_pairs": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
               "tuned_reward_accuracy": _mean(margin > 0), "mean_reward_margin": _mean(cfg.finetune.beta * margin),
               **held_out_accuracy(test, c)}
    _model_card(cfg, adapter, data_fp, summary)
    if cfg.finetune.merge:
        model.merge_and_unload().save_pretrained(str(workdir / "merged"))
        tok.save_pretrained(str(workdir / "merged"))
    publish(workdir, NAME, summary, _lines(summary))
    test_rows = {"chosen_id": test["chosen_id"], "rejected_id": test["rejected_id"], **cols,
                 "reward_margin": (cfg.finetune.beta * margin).tolist()}
    return DatasetDict({"log": Dataset.from_list(log) if log else Dataset.from_dict({"step": []}),
                        "eval_log": Dataset.from_list(evals) if evals else
                        Dataset.from_dict({k.replace("/", "_"): [] for k in EVAL_KEYS}),
                        "test": Dataset.from_dict(test_rows)})


def held_out_accuracy(test, c: dict) -> dict:
    """Held-out pairs the policy ranks right by log-probability (chosen above rejected), base and tuned: per pair,
    and per distinct text (each distinct chosen, and each distinct rejected, text's pairs averaged, then the texts
    averaged: many pairs reuse a few texts, so per pair over-counts them)."""
    out = {}
    for tag in ("base", "tuned"):
        right = c[f"{tag}_logp_chosen"] > c[f"{tag}_logp_rejected"]
        out[f"{tag}_test_accuracy"] = _mean(right)
        for side in ("chosen", "rejected"):
            by_text: dict = {}
            for text_id, ok in zip(test[f"{side}_id"], right):
                by_text.setdefault(text_id, []).append(ok)
            out[f"{tag}_test_accuracy_per_{side}_text"] = _mean(np.array([np.mean(v) for v in by_text.values()]))
    out["distinct_test_texts"] = {"chosen": len(set(test["chosen_id"])), "rejected": len(set(test["rejected_id"]))}
    out["base_already_right"] = out["base_test_accuracy"] == 1.0
    return out


def _lines(s: dict) -> list[str]:
    lines = [f"{s['optimizer_steps']} steps, final loss {number(s['final_loss'], '.4f')}; held-out DPO loss "
             f"{number(s['final_eval_loss'], '.4f')}, reward accuracy {number(s['final_eval_reward_accuracy'], '.2f')} "
             f"({s['eval_pairs']} pairs)",
             f"held-out pairs ranked right by log-probability: base {number(s['base_test_accuracy'], '.2f')} (per "
             f"distinct chosen text {number(s['base_test_accuracy_per_chosen_text'], '.2f')}), tuned "
             f"{number(s['tuned_test_accuracy'], '.2f')} (per distinct chosen text "
             f"{number(s['tuned_test_accuracy_per_chosen_text'], '.2f')}); implicit-reward accuracy "
             f"{number(s['tuned_reward_accuracy'], '.2f')}"]
    if s["base_already_right"]:
        lines.append("warning: the base model already ranks every held-out chosen answer above its rejected one by "
                     "log-probability: at the pair level these pairs teach nothing it lacked, and held-out accuracy "
                     "cannot show learning")
    return lines


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _model_card(cfg: Config, adapter: Path, data_fp: str, summary: dict) -> None:
    fc = cfg.finetune
    lines = ["---", "library_name: peft", f"base_model: {cfg.model.name_or_path}", "tags: [dpo, lora, spmcmc, trl]",
             "---", "", "# spMCMC LoRA-DPO adapter", "",
             "LoRA adapter trained with TRL DPO on preference pairs built from the model's own spMCMC "
             + (f"preferences for the query {cfg.sample_space.query!r}." if cfg.sample_space.query is not None else
                f"preferences over the prompt set {cfg.sample_space.prompts!r}."), "",
             f"- base model: `{cfg.model.name_or_path}`", f"- preference data fingerprint: `{data_fp}`",
             f"- LoRA: r={fc.lora_r}, alpha={fc.lora_alpha}, dropout={fc.lora_dropout}, "
             f"targets={list(fc.target_modules)}",
             f"- DPO: beta={fc.beta}, loss={list(fc.loss_type)}, lr={fc.learning_rate}, epochs={fc.num_epochs}, "
             f"batch={fc.batch_size}x{fc.gradient_accumulation_steps}, max_length={fc.max_length}, "
             f"sft_first={fc.sft_first}, quantization={fc.quantization}, seed={fc.seed}", "", "## Final metrics", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    (adapter / "README.md").write_text("\n".join(lines) + "\n")
