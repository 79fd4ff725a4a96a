"""Aligner SFT: LoRA (peft) on the chosen layers, loss on the corrected answer only.

A short loop of our own rather than trl's SFTTrainer: we need per-step timing for the ILA
benchmarks, best-on-validation adapter saving with early stopping, and checkpoints without
pickle (optimizer state goes to safetensors), which would mean overriding most of a Trainer.

Output folder: `adapter/` (peft, safetensors), `manifest.json`, `train_log.jsonl`, and while
training `checkpoint/` (resumable with `resume=True`; removed when training ends).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from aligners.atomic import atomic_dir
from aligners.dataset import data_hash
from aligners.formatting import FORMAT_VERSION
from aligners.lora import (
    ADAPTER_DIR,
    answer_loss,
    attach_lora,
    batches,
    epoch_order,
    eval_loss,
    eval_pairs,
    num_layers,
    tokenize_all,
    training_pairs,
)
from aligners.manifest import checksums, write_manifest
from aligners.models import load_causal_lm, model_id_and_hash
from aligners.prefix_cache import PrefixCache, build_prefix_cache
from aligners.schema import Pair
from aligners.train_config import AlignerTrainConfig

CHECKPOINT_DIR = "checkpoint"


def resolve_layers(cfg: AlignerTrainConfig, model, tokenizer, train: Sequence[Pair]) -> tuple[list[int], dict]:
    """The layers to tune and how they were chosen (recorded in the manifest)."""
    total = num_layers(model)
    if cfg.layers == "all":
        return list(range(total)), {"method": "all"}
    if isinstance(cfg.layers, list):
        bad = [i for i in cfg.layers if i >= total]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has {total} layers (0..{total - 1})")
        return sorted(cfg.layers), {"method": "explicit"}
    from aligners.importance import cost_aware_layers, layer_importance

    scores = layer_importance(model, tokenizer, train, cfg)
    k = cfg.importance.k_for(total)
    return cost_aware_layers(scores, k, cfg.importance.cost_share), {
        "method": cfg.importance.method, "k": k, "cost_share": cfg.importance.cost_share, "scores": scores}


# --- checkpoints (no pickle: tensors in safetensors, counters in JSON) --------------------------


def _save_checkpoint(out: Path, model, optimizer, state: dict) -> None:
    from peft import get_peft_model_state_dict

    opt = optimizer.state_dict()
    tensors = {
        f"{pid}.{key}": (val if torch.is_tensor(val) else torch.tensor(val)).contiguous()
        for pid, pstate in opt["state"].items()
        for key, val in pstate.items()
    }
    with atomic_dir(out / CHECKPOINT_DIR, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, tmp / "adapter.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "param_groups": opt["param_groups"]}))


def _load_checkpoint(out: Path, model, optimizer) -> dict:
    from peft import set_peft_model_state_dict

    ckpt = out / CHECKPOINT_DIR
    set_peft_model_state_dict(model, load_file(ckpt / "adapter.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())
    per_param: dict[int, dict] = {}
    for name, tensor in load_file(ckpt / "optimizer.safetensors").items():
        pid, key = name.split(".", 1)
        per_param.setdefault(int(pid), {})[key] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state


# --- frozen-prefix cache ------------------------------------------------------------------


class _Prefixes:
    """Where each batch's forward starts: eval batches first in the cache, then the training
    batches when training comes round to a batch again (under one epoch they would never be reused)."""

    def __init__(self, cache: PrefixCache | None, n_eval: int):
        self.cache, self.n_eval = cache, n_eval

    def train(self, index: int):
        holds_train = self.cache is not None and len(self.cache.batches) > self.n_eval
        return self.cache.hidden(self.n_eval + index) if holds_train else None


def _prefix_cache(cfg: AlignerTrainConfig, model, depth: int, eval_batches, train_batches, total_steps: int,
                  base_hash: str) -> tuple[_Prefixes, dict]:
    if not cfg.prefix_cache:
        return _Prefixes(None, 0), {"used": False, "reason": "prefix_cache: false"}
    cache_train = total_steps * cfg.grad_accum > len(train_batches)
    cached = eval_batches + (train_batches if cache_train else [])
    cache, info = build_prefix_cache(model, depth, cached, max_gb=cfg.prefix_cache_max_gb,
                                     folder=cfg.prefix_cache_dir, key=base_hash)
    return _Prefixes(cache, len(eval_batches)), info | ({"train_batches_cached": cache_train} if cache else {})


# --- training ------------------------------------------------------------------------------


def train_aligner(
    cfg: AlignerTrainConfig,
    train: Sequence[Pair],
    validation: Sequence[Pair],
    out_dir: Path | str,
    *,
    resume: bool = False,
    model=None,
    tokenizer=None,
    progress: bool = True,
) -> dict:
    """Train one aligner and write its artifact folder; returns the manifest dict."""
    out = Path(out_dir)
    if not train:
        raise ValueError("no training pairs")
    criterion = cfg.criterion or train[0].criterion
    if not resume and (out / ADAPTER_DIR).exists():
        raise FileExistsError(f"{out} already holds an aligner; pass resume=True or another --out")
    if resume and not (out / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/ folder")
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model, tokenizer = load_causal_lm(cfg.base)
    t_start = time.perf_counter()

    if resume:
        meta = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
        layers, selection = meta["layers"], meta["selection"]
    else:
        layers, selection = resolve_layers(cfg, model, tokenizer, train)
    peft_model = attach_lora(model, cfg, layers)
    peft_model.train()

    # a pair cut to max_length would teach answering without the question, or stopping mid-answer
    tokenized = tokenize_all(tokenizer, training_pairs(train, cfg), cfg.max_length, cfg.cut_long_answers)
    examples = [e for e in tokenized if e.fits]
    if not examples:
        raise ValueError(f"no training pair fits in max_length={cfg.max_length} tokens; raise max_length")
    eval_examples = tokenize_all(tokenizer, eval_pairs(validation, cfg.max_eval_examples), cfg.max_length,
                                 cfg.cut_long_answers)
    train_batches = batches(examples, cfg.batch_size, tokenizer.pad_token_id, seed=None)
    eval_batches = batches(eval_examples, cfg.batch_size, tokenizer.pad_token_id, seed=None)
    steps_per_epoch = max(1, len(train_batches) // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    base_id, base_hash = model_id_and_hash(cfg.base)
    prefix, prefix_info = _prefix_cache(cfg, peft_model, min(layers), eval_batches, train_batches, total_steps, base_hash)

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * max(0.0, 1 - s / total_steps)
    )
    state = {"step": 0, "best_eval": None, "bad_evals": 0, "layers": layers, "selection": selection}
    if resume:
        state.update(_load_checkpoint(out, peft_model, optimizer))
        sched.load_state_dict(state.pop("scheduler"))

    log = open(out / "train_log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed after the loop
    step_times: list[float] = []
    eval_s = 0.0  # early stopping's share of the wall-clock (small data: a large one)
    last_loss = float("nan")
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {criterion}", disable=not progress)
    micro = state["step"] * cfg.grad_accum
    stopped_early = False
    while state["step"] < total_steps and not stopped_early:
        epoch, offset = divmod(micro, len(train_batches))
        for index in epoch_order(len(train_batches), cfg.seed + epoch)[offset:]:
            if micro % cfg.grad_accum == 0:  # a step spans grad_accum micro-batches
                t0 = time.perf_counter()
            loss = answer_loss(peft_model, train_batches[index], prefix.train(index)) / cfg.grad_accum
            loss.backward()
            micro += 1
            if micro % cfg.grad_accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            sched.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            state["step"] += 1
            last_loss = loss.item() * cfg.grad_accum
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            record = {"step": state["step"], "loss": last_loss}
            if state["step"] % cfg.eval_every == 0 or state["step"] == total_steps:
                t_eval = time.perf_counter()
                record["eval_loss"] = ev = eval_loss(peft_model, eval_batches, prefix.cache) if eval_batches else last_loss
                eval_s += time.perf_counter() - t_eval
                if state["best_eval"] is None or ev < state["best_eval"]:
                    state["best_eval"], state["bad_evals"] = ev, 0
                    peft_model.save_pretrained(out / ADAPTER_DIR)
                else:
                    state["bad_evals"] += 1
                    stopped_early = state["bad_evals"] >= cfg.early_stopping_patience
            log.write(json.dumps(record) + "\n")
            log.flush()
            if state["step"] % cfg.checkpoint_every == 0 and not stopped_early:
                _save_checkpoint(out, peft_model, optimizer, {**state, "scheduler": sched.state_dict()})
            if state["step"] >= total_steps or stopped_early:
                break
    bar.close()
    log.close()
    if not (out / ADAPTER_DIR).exists():
        peft_model.save_pretrained(out / ADAPTER_DIR)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)

    manifest = {
        "kind": "aligner",
        "format_version": FORMAT_VERSION,
        "criterion": criterion,
        "base": base_id,
        "base_hash": base_hash,
        "layers": layers,
        "num_layers": num_layers(model),
        "layer_selection": selection,
        "inference": "taia" if cfg.taia else "full",
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "target_modules": list(cfg.target_modules)},
        "files": {"sha256": checksums(out, [p for p in (out / ADAPTER_DIR).rglob("*") if p.is_file()])},
        "recipe": cfg.model_dump(mode="json"),
        "data": {"train_hash": data_hash(train), "train_pairs": len(train), "examples": len(examples),
                 "too_long": len(tokenized) - len(examples), "answers_cut": sum(e.answer_cut for e in examples)},
        "metrics": {
            "steps": state["step"],
            "final_train_loss": last_loss,
            "best_eval_loss": state["best_eval"],
            "stopped_early": stopped_early,
            "mean_step_s": sum(step_times) / len(step_times) if step_times else None,
            "eval_s": eval_s,
            "wall_s": time.perf_counter() - t_start,
            "prefix_cache": prefix_info,
        },
    }
    write_manifest(out, manifest)
    return manifest
