"""CLI commands of aligners/: offline models, generation, the demo, and the aligner jobs (ILA layer
selection, training, export, analysis), registered in aligners/cli.py.

Only typer and the standard library are imported here; torch, transformers and the jobs are
imported inside the commands (start-up cost: `aligners --help` must not load a model library).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def models() -> None:
    """List the offline models that load with no network.

    Example: aligners models
    """
    from rich.console import Console
    from rich.table import Table

    from aligners.models import OFFLINE_MODELS

    table = Table()
    table.add_column("name", no_wrap=True)
    for header in ("kind", "shipped by", "about"):
        table.add_column(header)
    for m in OFFLINE_MODELS.values():
        table.add_row(m.name, m.kind, m.package or "-", m.about)
    Console().print(table)


def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more user prompts.")],
    model: Annotated[str, typer.Option(help="Registry name, HF id/path, or http(s) URL.")] = "smollm2-135m-instruct",
    max_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
) -> None:
    """Answer prompts with a base model through the generation backends.

    Example: aligners generate "What is the capital of France?" --max-tokens 32
    """
    from aligners.backends import GenerationRequest, SamplingParams, backend_from_spec

    backend = backend_from_spec(model)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    outs = backend.generate([GenerationRequest.chat(p, params=params) for p in prompts])
    for prompt, out in zip(prompts, outs, strict=True):
        typer.echo(f"> {prompt}\n{out.text}\n")


def demo(
    squad: Annotated[str | None, typer.Option(help="Squad recipe (default: configs/squad/default.yaml).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Base answer length cap.")] = 96,
) -> None:
    """Run the starter squad on mixed prompts with the embedded SmolLM2 (no network, no GPU).

    Example: aligners demo
    """
    from aligners.demo import DEFAULT_SQUAD, run_demo

    run_demo(squad or DEFAULT_SQUAD, max_tokens=max_tokens)


DataOpt = Annotated[
    str, typer.Option("--data", help="Synth output folder, or seed:<criterion> for a shipped seed set.")
]


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, KEY=VALUE (repeatable; a dotted key sets a nested "
                 "field), e.g. --set lora_r=16, --set importance.top_k=6, --set C=0.5."),
]


def _recipe(config: str | None, sets: list[str] | None, flags: dict):
    """Recipe YAML (optional), then `--set` overrides, then the dedicated flags that were given
    (trl style)."""
    from aligners.config import apply_overrides, read_yaml, validate
    from aligners.train_config import AlignerTrainConfig

    data = apply_overrides(read_yaml(config) if config else {}, sets or [])
    data.update({k: v for k, v in flags.items() if v is not None})
    return validate(AlignerTrainConfig, data, config or "<flags>")


def _parse_layers(layers: str | None):
    if layers is None or layers in ("auto", "all"):
        return layers
    try:
        return [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes auto, all or a comma list like 20,21,22 (got {layers!r})") from None


def select_layers_command(
    data: Annotated[list[str], typer.Option("--data", help="Repeat to compare data sets (folder or seed:<name>).")],
    out: Annotated[str, typer.Option(help="Folder for importance.json and importance.png.")],
    base: Annotated[str | None, typer.Option(help="Base model (default: recipe's).")] = None,
    config: Annotated[str | None, typer.Option(help="Aligner recipe YAML (LoRA shape, importance settings).")] = None,
    method: Annotated[list[str], typer.Option(help="gates (ILA) and/or grad-norm; repeat for both.")] = ["gates"],  # noqa: B006
    seed: Annotated[list[int], typer.Option(help="Run seed; repeat to measure stability across seeds.")] = [0],  # noqa: B006
    set_: SetOpt = None,
) -> None:
    """Rank layers by importance for alignment (ILA) and report top-k overlaps.

    Example: aligners select-layers --data seed:harmless --data seed:polite --seed 0 --seed 1 --out runs/layers
    """
    from aligners.dataset import resolve_data
    from aligners.importance import METHODS, select_layers

    bad = [m for m in method if m not in METHODS]
    if bad:
        raise typer.BadParameter(f"unknown method(s) {bad}; choose from {sorted(METHODS)}")
    cfg = _recipe(config, set_, {"base": base})
    sets = {spec: resolve_data(spec)["train"] for spec in data}
    result = select_layers(sets, cfg, out, methods=method, seeds=seed)
    for run in result["runs"]:
        typer.echo(f"{run['data']} {run['method']} seed={run['seed']}: top-{result['k']} = {run['top_k']}")
    for kind, o in result["overlap"].items():
        rho = "n/a" if o["rank_correlation"] is None else f"{o['rank_correlation']:.2f}"
        typer.echo(f"overlap {kind}: mean top-{result['k']} Jaccard {o['mean']:.2f}, mean Spearman rho of all scores {rho}")
    typer.echo(f"wrote {out}/importance.json and importance.png")


def train_aligner_command(
    data: DataOpt,
    out: Annotated[str, typer.Option(help="Artifact folder (adapter/ + manifest.json).")],
    base: Annotated[str | None, typer.Option(help="Base model (default smollm2-135m-instruct).")] = None,
    layers: Annotated[str | None, typer.Option(help="auto (ILA top-k), all, or a comma list.")] = None,
    layers_from: Annotated[
        str | None, typer.Option(help="importance.json from select-layers: top-k of the mean score over its runs on --data with the recipe's method (all data if none).")
    ] = None,
    taia: Annotated[bool | None, typer.Option("--taia/--no-taia", help="Serve attention deltas only (TAIA).")] = None,
    config: Annotated[str | None, typer.Option(help="Recipe YAML, e.g. configs/aligners/harmless.yaml.")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (data split, LoRA init, sampling order).")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
) -> None:
    """Train an aligner (LoRA on its important layers) for one criterion.

    Example: aligners train-aligner --data seed:harmless --layers auto --out artifacts/aligners/harmless
    """
    from aligners.dataset import resolve_data
    from aligners.train import train_aligner

    cfg = _recipe(config, set_, {"base": base, "layers": _parse_layers(layers), "taia": taia, "max_steps": max_steps,
                                    "seed": seed})
    if layers_from:
        import json

        from aligners.importance import layers_from_runs

        try:
            chosen = layers_from_runs(json.loads(Path(layers_from).read_text()), data, cfg.importance.method,
                                      cfg.importance.cost_share)
        except (OSError, ValueError, KeyError) as exc:
            raise typer.BadParameter(f"{layers_from}: {exc}", param_hint="--layers-from") from None
        cfg = cfg.model_copy(update={"layers": chosen})
    splits = resolve_data(data, seed=cfg.seed)
    manifest = train_aligner(cfg, splits["train"], splits["validation"], out, resume=resume)
    m = manifest["metrics"]
    typer.echo(
        f"trained {manifest['criterion']} aligner on layers {manifest['layers']}: {m['steps']} steps, "
        f"best eval loss {m['best_eval_loss']:.3f}, {m['wall_s']:.0f} s → {out}"
    )


def export(
    aligner: Annotated[str, typer.Option(help="Aligner artifact folder.")],
    out: Annotated[str, typer.Option(help="Folder for the standalone model.")],
    merged: Annotated[bool, typer.Option("--merged", help="Merge the adapter into the base (required).")] = False,
    taia: Annotated[bool | None, typer.Option("--taia/--no-taia", help="Merge attention deltas only.")] = None,
) -> None:
    """Export an aligner as a standalone merged model (safetensors), e.g. for a plain vLLM server.

    Example: aligners export --aligner artifacts/aligners/harmless --merged --out runs/harmless-merged
    """
    from aligners.artifact import export_merged

    if not merged:
        raise typer.BadParameter("only merged export exists: pass --merged")
    typer.echo(f"wrote {export_merged(aligner, out, taia=taia)}")


def analyze(
    aligner: Annotated[str, typer.Option(help="Aligner artifact folder.")],
    data: DataOpt,
    out: Annotated[str, typer.Option(help="Report folder (report.md, report.json, PNGs).")],
    split: Annotated[str, typer.Option(help="Which split to analyse.")] = "test",
) -> None:
    """Head importance, adapter deltas and input attribution of a trained aligner.

    Example: aligners analyze --aligner artifacts/aligners/harmless --data seed:harmless --out report/
    """
    from aligners.analysis import analyze_aligner
    from aligners.dataset import resolve_data

    analyze_aligner(aligner, resolve_data(data)[split], out)
    typer.echo(f"wrote {out}/report.md")
