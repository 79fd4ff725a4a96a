"""Which layers matter for an alignment task (ILA, 2410.17875), plus a cheap baseline.

`gates` (the paper's method, two stages): train LoRA on every layer for a few steps until it has
started to move, then freeze it and learn one relaxed binary gate per layer that scales that
layer's LoRA updates, minimising the task loss. The paper shuts gates with a fixed sparsity
penalty; here the gates share a budget instead, g = min(1, k * softmax(s)), so layers compete
for k open gates and rank by their logit s. A fixed penalty suits one data set only: on SmolLM2
the same weight left every harmless gate saturated open and shut almost every polite gate, and
12 steps of it barely moved any gate, so top-k sets came from noise (Jaccard 0.61 across seeds).

`grad-norm` (baseline): the norm of the loss gradient w.r.t. each layer's freshly initialised
LoRA weights, averaged over a few batches. No training, so cheaper, but it measures where the
loss is sensitive at the start rather than where updates end up helping.

Both leave the model as they found it (LoRA attached for the measurement is unloaded).
`select_layers` runs them over data sets, methods and seeds, and reports how much the top-k sets
agree (Jaccard, rank correlation) with a heatmap: the whole of ILA lives in this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import combinations, cycle, islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aligners.atomic import write_text_atomic
from aligners.dataset import data_hash
from aligners.lora import (
    answer_loss,
    attach_lora,
    batches,
    num_layers,
    tokenize_all,
    training_pairs,
)
from aligners.schema import Pair
from aligners.train_config import AlignerTrainConfig

_LAYER_OF = re.compile(r"\.layers\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER_OF.search(name)
    return int(m.group(1)) if m else None


def _task_batches(tokenizer, train: Sequence[Pair], cfg: AlignerTrainConfig):
    imp = cfg.importance
    examples = tokenize_all(tokenizer, training_pairs(train, cfg), cfg.max_length)
    # Measure on the examples that fit whole in imp.max_length (cheaper steps, nothing truncated);
    # fall back to truncating when too few fit.
    short = [e for e in examples if len(e.input_ids) <= imp.max_length]
    if len(short) < 4 * imp.batch_size:
        short = tokenize_all(tokenizer, training_pairs(train, cfg), imp.max_length)
    return batches(short, imp.batch_size, tokenizer.pad_token_id, seed=cfg.seed)


def gate_importance(model, tokenizer, train: Sequence[Pair], cfg: AlignerTrainConfig) -> dict[int, float]:
    imp = cfg.importance
    data = _task_batches(tokenizer, train, cfg)
    peft_model = attach_lora(model, cfg, layers=None)
    peft_model.train()
    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora_params, lr=cfg.learning_rate)
    for batch in tqdm(islice(cycle(data), imp.warmup_steps), total=imp.warmup_steps, desc="ILA 1/2: LoRA warm-up"):
        answer_loss(peft_model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p in lora_params:
        p.requires_grad_(False)

    n = num_layers(model)
    k = imp.k_for(n)
    logits = torch.zeros(n, requires_grad=True)  # every layer starts with the same share, k/n
    current = {}
    hooks = []
    for name, module in peft_model.named_modules():
        layer = _layer_of(name)
        if layer is not None and name.endswith("lora_B.default"):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, layer=layer: out * current["gates"][layer]
            ))
    gate_opt = torch.optim.Adam([logits], lr=imp.gate_lr)
    try:
        for batch in tqdm(islice(cycle(data), imp.gate_steps), total=imp.gate_steps, desc="ILA 2/2: layer gates"):
            # A budget of k open gates in all: layers compete for it, and a gate never exceeds 1.
            current["gates"] = torch.clamp(k * torch.softmax(logits, dim=0), max=1.0)
            answer_loss(peft_model, batch).backward()
            gate_opt.step()
            gate_opt.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
        peft_model.unload()
    return {i: float(logits[i].detach()) for i in range(n)}


def grad_norm_importance(model, tokenizer, train: Sequence[Pair], cfg: AlignerTrainConfig) -> dict[int, float]:
    data = _task_batches(tokenizer, train, cfg)
    peft_model = attach_lora(model, cfg, layers=None)
    peft_model.train()
    try:
        for batch in tqdm(islice(cycle(data), cfg.importance.batches), total=cfg.importance.batches, desc="grad-norm"):
            answer_loss(peft_model, batch).backward()
        scores = dict.fromkeys(range(num_layers(model)), 0.0)
        for name, p in peft_model.named_parameters():
            layer = _layer_of(name)
            if p.requires_grad and p.grad is not None and layer is not None:
                scores[layer] += float(p.grad.norm()) / cfg.importance.batches
    finally:
        peft_model.unload()
    return scores


METHODS = {"gates": gate_importance, "grad-norm": grad_norm_importance}


def layer_importance(model, tokenizer, train: Sequence[Pair], cfg: AlignerTrainConfig) -> dict[int, float]:
    """Per-layer importance by `cfg.importance.method`, seeded by `cfg.seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return METHODS[cfg.importance.method](model, tokenizer, train, cfg)


def top_k_layers(scores: dict[int, float], k: int) -> list[int]:
    """The k most important layers, in layer order (ties broken by lower layer)."""
    ranked = sorted(scores, key=lambda layer: (-scores[layer], layer))
    return sorted(ranked[:k])


def cost_aware_layers(scores: dict[int, float], k: int, share: float | None) -> list[int]:
    """The k layers to tune when training cost counts: backward runs from the top down to the
    lowest tuned layer, so take the best k layers at or above the highest depth L whose best k
    still hold `share` of the plain top-k's summed importance. `share` None (or 1 with the top-k
    already highest) is plain ILA."""
    plain = top_k_layers(scores, k)
    if share is None:
        return plain
    target = share * sum(scores[layer] for layer in plain)
    for lowest in sorted(scores, reverse=True):
        above = {layer: v for layer, v in scores.items() if layer >= lowest}
        if len(above) < k:
            continue
        best = top_k_layers(above, k)
        if sum(above[layer] for layer in best) >= target:
            return best
    return plain


def layers_from_runs(result: dict, data: str, method: str, cost_share: float | None = None) -> list[int]:
    """What `train-aligner --layers-from` tunes: the top-k (cost-aware with `cost_share`) of the mean
    score over a select-layers result's runs of `method` on `data` (over all its runs of `method`
    when none was on `data`)."""
    runs = [r for r in result["runs"] if r["data"] == data and r["method"] == method] or [
        r for r in result["runs"] if r["method"] == method
    ]
    if not runs:
        raise ValueError(f"the select-layers result has no {method!r} runs")
    mean = {int(layer): sum(r["scores"][layer] for r in runs) / len(runs) for layer in runs[0]["scores"]}
    return cost_aware_layers(mean, result["k"], cost_share)


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def rank_correlation(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Spearman correlation of two runs' scores over every layer: agreement that a top-k Jaccard
    misses when more layers matter than k (one swap at the boundary costs 0.22 of Jaccard at k=8).
    None when a run scores every layer alike."""
    from scipy.stats import spearmanr

    layers = sorted(a, key=int)
    rho = float(spearmanr([a[i] for i in layers], [b[i] for i in layers]).statistic)
    return None if math.isnan(rho) else rho


def pairwise_overlap(sets: dict[str, Sequence[int]]) -> dict[str, float]:
    """Jaccard overlap of every pair of top-k sets, keyed 'a ~ b'."""
    return {f"{a} ~ {b}": jaccard(sets[a], sets[b]) for a, b in combinations(sorted(sets), 2)}


def overlaps(runs: list[dict]) -> dict:
    label = lambda r: f"{r['data']}/{r['method']}/s{r['seed']}"
    groups = {
        "across_seeds": lambda r: (r["data"], r["method"]),
        "across_data": lambda r: (r["method"], r["seed"]),
        "across_methods": lambda r: (r["data"], r["seed"]),
    }
    overlap = {}
    for kind, key in groups.items():
        found, rhos = {}, []
        for group in {key(r) for r in runs}:
            members = {label(r): r for r in runs if key(r) == group}
            if len(members) > 1:
                found.update(pairwise_overlap({name: r["top_k"] for name, r in members.items()}))
                rhos += [rank_correlation(members[a]["scores"], members[b]["scores"]) for a, b in combinations(sorted(members), 2)]
        if found:
            rhos = [rho for rho in rhos if rho is not None]
            overlap[kind] = {"pairs": found, "mean": sum(found.values()) / len(found),
                             "rank_correlation": sum(rhos) / len(rhos) if rhos else None}
    return overlap


def plot_layer_heatmap(rows: Sequence[tuple[str, dict[int, float]]], path: Path, title: str) -> Path:
    """One row per run (method/seed/data), one column per layer; each row scaled to its own
    min..max, since methods score on different scales (gate logits can be negative)."""
    import matplotlib

    matplotlib.use("Agg")  # deferred: start-up cost (matplotlib is only needed to plot)
    import matplotlib.pyplot as plt

    layers = sorted({layer for _, scores in rows for layer in scores})
    grid = []
    for _, scores in rows:
        low, high = min(scores.values()), max(scores.values())
        grid.append([(scores.get(layer, low) - low) / ((high - low) or 1.0) for layer in layers])
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.3), 1 + 0.4 * len(rows)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_xticks(range(len(layers)), layers, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="importance (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def select_layers(
    data: dict[str, Sequence[Pair]],
    cfg: AlignerTrainConfig,
    out_dir,
    methods: Sequence[str] = ("gates",),
    seeds: Sequence[int] = (0,),
    load_model=None,
) -> dict:
    """Importance for every (seed, data set, method), top-k sets, and how much they agree.

    Writes `importance.json` and `importance.png` (heatmap) to `out_dir` after every run, and
    skips runs already recorded there on the same pairs (`data_hash`): an interrupted selection
    resumes, and a later call with more seeds or data sets extends the same file. A run on a data
    set whose pairs have changed since (rebuilt aligner data under the same folder) is redone.
    The paper reports ~90 % overlap of important layers across alignment datasets; `overlap`
    measures ours across seeds, data sets and methods (Jaccard of top-k sets).
    """
    import json

    from aligners.models import load_causal_lm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "importance.json"
    hashes = {name: data_hash(pairs) for name, pairs in data.items()}
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in runs if r["data"] not in hashes or r.get("data_hash") == hashes[r["data"]]]
    done = {(r["data"], r["method"], r["seed"]) for r in runs}
    todo = [(n, m, s) for s in seeds for n in data for m in methods if (n, m, s) not in done]
    model = tokenizer = None
    k = None
    result = {"base": cfg.base, "k": k, "runs": runs, "overlap": overlaps(runs)}
    for name, method, seed in todo:
        if model is None:
            model, tokenizer = (load_model or (lambda: load_causal_lm(cfg.base)))()
            k = cfg.importance.k_for(model.config.num_hidden_layers)
        run_cfg = cfg.model_copy(update={"seed": seed, "importance": cfg.importance.model_copy(update={"method": method})})
        scores = layer_importance(model, tokenizer, data[name], run_cfg)
        runs.append({"data": name, "data_hash": hashes[name], "method": method, "seed": seed,
                     "scores": {str(i): v for i, v in scores.items()}, "top_k": top_k_layers(scores, k)})
        result = {"base": cfg.base, "k": k, "runs": runs, "overlap": overlaps(runs)}
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
        plot_layer_heatmap(
            [(f"{r['data']}/{r['method']}/s{r['seed']}", {int(i): v for i, v in r["scores"].items()}) for r in runs],
            out / "importance.png", f"layer importance, top-{k} per run",
        )
    if result["k"] is None and runs:
        result["k"] = len(runs[0]["top_k"])
    return result
