"""Reports on what alignment changed: head importance (2409.15820), adapter delta norms, and
input→output attribution (2310.00492). ILA's layer heatmaps and overlaps live in
`aligners.importance`.

Plots are PNGs (matplotlib, Agg) written beside a Markdown report and a JSON file with every
number, so people can look and scripts can read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import cycle, islice
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from aligners.formatting import IGNORE_INDEX, tokenize_pair
from aligners.lora import answer_loss, batches, tokenize_all
from aligners.prefix_cache import causal_lm, decoder_of
from aligners.schema import Pair

# --- heads ---------------------------------------------------------------------------------


def _layers(model):
    return decoder_of(model).layers, causal_lm(model).config


def head_importance(model, batches: Sequence[dict]) -> torch.Tensor:
    """|∂loss/∂m| for a head mask m = 1 on each head's output (Michel et al., as used in 2409.15820).

    A head whose removal would change the loss most gets the largest score. Returns
    (layers, heads), accumulated over `batches`.
    """
    layers, config = _layers(model)
    n_heads = config.num_attention_heads
    masks = torch.ones(len(layers), n_heads, requires_grad=True)

    def pre_hook(index):
        def apply(_module, args):
            x = args[0]
            shaped = x.view(*x.shape[:-1], n_heads, -1) * masks[index].view(n_heads, 1)
            return (shaped.view_as(x), *args[1:])

        return apply

    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(pre_hook(i)) for i, layer in enumerate(layers)]
    model.eval()
    try:
        for batch in batches:
            answer_loss(model, batch).backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return masks.grad.abs().detach()


def adapter_delta_norms(peft_model) -> dict[str, dict[int, float]]:
    """Frobenius norm of each LoRA update ΔW = B·A·scale, per module type and layer."""
    out: dict[str, dict[int, float]] = {}
    for name, module in peft_model.named_modules():
        m = re.search(r"\.layers\.(\d+)\..*?\.?(\w+_proj)$", name)
        if not m or not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        delta = (b @ a) * module.scaling["default"]
        out.setdefault(m.group(2), {})[int(m.group(1))] = float(delta.norm())
    return out


def head_delta_norms(peft_model, n_heads: int) -> torch.Tensor:
    """Per head: norm of the q_proj rows and o_proj columns the adapter changed, (layers, heads)."""
    rows: dict[int, torch.Tensor] = {}
    for name, module in peft_model.named_modules():
        m = re.search(r"\.layers\.(\d+)\.self_attn\.(q_proj|o_proj)$", name)
        if not m or not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight) * module.scaling["default"]
        per_head = delta.view(n_heads, -1, delta.shape[1]) if m.group(2) == "q_proj" else delta.T.reshape(n_heads, -1, delta.shape[0])
        layer = int(m.group(1))
        rows[layer] = rows.get(layer, torch.zeros(n_heads)) + per_head.pow(2).sum(dim=(1, 2)).detach()
    if not rows:
        return torch.zeros(0, n_heads)
    n_layers = max(rows) + 1
    return torch.stack([rows.get(i, torch.zeros(n_heads)) for i in range(n_layers)]).sqrt()


# --- attribution ---------------------------------------------------------------------------


def gradient_x_input(model, tokenizer, pair: Pair, max_length: int = 384) -> list[tuple[str, float]]:
    """Which prompt tokens drove the correction: |∇_e log p(target) · e| per input token.

    Scored over the masked (prompt) part only and normalised to sum 1 (2310.00492's
    gradient-based input→output attribution).
    """
    ex = tokenize_pair(tokenizer, pair, max_length)
    ids = torch.tensor([ex.input_ids])
    labels = torch.tensor([ex.labels])
    embed = model.get_input_embeddings()
    embeds = embed(ids).detach().requires_grad_(True)
    model.eval()
    model(inputs_embeds=embeds, labels=labels).loss.backward()
    scores = (embeds.grad * embeds).sum(-1).abs()[0].detach()
    model.zero_grad(set_to_none=True)
    n_prompt = sum(1 for lab in ex.labels if lab == IGNORE_INDEX)
    scores = scores[:n_prompt]
    scores = scores / scores.sum().clamp_min(1e-12)
    tokens = tokenizer.convert_ids_to_tokens(ex.input_ids[:n_prompt])
    return [(tokenizer.convert_tokens_to_string([t]), float(s)) for t, s in zip(tokens, scores, strict=True)]


# --- the report ----------------------------------------------------------------------------


def _heatmap(matrix: torch.Tensor, path: Path, title: str, xlabel: str, ylabel: str, xticks=None) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, matrix.shape[1] * 0.35), max(3, matrix.shape[0] * 0.22)))
    im = ax.imshow(matrix.numpy(), aspect="auto", cmap="magma")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=45, fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _highlight(tokens: list[tuple[str, float]], top: int = 8) -> str:
    cut = sorted((s for _, s in tokens), reverse=True)[: top][-1] if tokens else 0
    return "".join(f"**{t}**" if s >= cut and t.strip() else t for t, s in tokens)


def analyze_aligner(aligner_dir: Path | str, pairs: Sequence[Pair], out_dir: Path | str,
                    n_batches: int = 4, n_examples: int = 3, model=None, tokenizer=None) -> dict:
    """Write report.md, report.json and PNGs for a trained aligner on some of its data."""
    from peft import PeftModel

    from aligners.artifact import AlignerArtifact
    from aligners.models import load_causal_lm

    art = AlignerArtifact.load(aligner_dir)
    if model is None:
        model, tokenizer = load_causal_lm(art.base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model = PeftModel.from_pretrained(model, str(art.adapter_dir(taia=False)))
    n_heads = model.config.num_attention_heads
    corrections = [p for p in pairs if p.needs_correction] or list(pairs)

    data = batches(tokenize_all(tokenizer, corrections, 384), 4, tokenizer.pad_token_id, seed=0)
    heads = head_importance(peft_model, list(islice(cycle(data), n_batches)))
    deltas = adapter_delta_norms(peft_model)
    head_deltas = head_delta_norms(peft_model, n_heads)
    modules = sorted(deltas)
    n_layers = model.config.num_hidden_layers
    delta_grid = torch.tensor([[deltas[m].get(i, 0.0) for m in modules] for i in range(n_layers)])
    _heatmap(heads, out / "head_importance.png", "head importance |∂L/∂mask| (aligner data)", "head", "layer")
    _heatmap(delta_grid, out / "delta_norms.png", "‖ΔW‖ per layer and module", "module", "layer", xticks=modules)
    if head_deltas.numel():
        _heatmap(head_deltas, out / "head_delta_norms.png", "‖ΔW‖ per head (q_proj rows + o_proj cols)", "head", "layer")
    attributions = [gradient_x_input(peft_model, tokenizer, p) for p in corrections[:n_examples]]

    top_heads = sorted(((float(heads[i, h]), i, h) for i in range(heads.shape[0]) for h in range(heads.shape[1])), reverse=True)[:10]
    layer_delta = delta_grid.sum(1)
    report = {
        "aligner": str(art.path),
        "criterion": art.criterion,
        "tuned_layers": art.manifest["layers"],
        "top_heads": [{"layer": i, "head": h, "score": s} for s, i, h in top_heads],
        "delta_norms": deltas,
        "layers_by_delta": [int(i) for i in torch.argsort(layer_delta, descending=True) if layer_delta[i] > 0],
        "attribution": [
            {"id": p.id, "top_tokens": sorted(a, key=lambda x: -x[1])[:10]} for p, a in zip(corrections, attributions, strict=False)
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Aligner analysis: {art.criterion}",
        "",
        f"Aligner `{art.path}`, tuned layers {art.manifest['layers']}.",
        "",
        "## Attention-head importance (gradient of the loss w.r.t. a head mask)",
        "![heads](head_importance.png)",
        "",
        "| layer | head | score |",
        "|---|---|---|",
        *[f"| {i} | {h} | {s:.4g} |" for s, i, h in top_heads],
        "",
        "## What the adapter changed (norm of the LoRA deltas)",
        "![deltas](delta_norms.png)",
        "",
        f"Layers by total ‖ΔW‖: {report['layers_by_delta']}",
        "",
    ]
    if head_deltas.numel():
        lines += ["![head deltas](head_delta_norms.png)", ""]
    lines += ["## Input → correction attribution (gradient × input, top tokens in bold)", ""]
    for p, a in zip(corrections, attributions, strict=False):
        lines += [f"**{p.id}** — correction: _{p.aligned}_", "", "> " + _highlight(a).replace("\n", " "), ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
