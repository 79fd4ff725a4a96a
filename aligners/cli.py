"""The `aligners` console script: one typer app, each command a thin wrapper over a typed function.

Heavy modules (torch, transformers) are imported inside the commands so `aligners --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Decoupled alignment: aligner models, inspectors and squads that correct any LLM's answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("models")
def models_cmd() -> None:
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


@app.command("generate")
def generate_cmd(
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


@app.command("demo")
def demo_cmd(
    squad: Annotated[str | None, typer.Option(help="Squad recipe (default: configs/squad/default.yaml).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Base answer length cap.")] = 96,
) -> None:
    """Run the starter squad on mixed prompts with the embedded SmolLM2 (no network, no GPU).

    Example: aligners demo
    """
    from aligners.demo import DEFAULT_SQUAD, run_demo

    run_demo(squad or DEFAULT_SQUAD, max_tokens=max_tokens)


# --- aligners: layer selection, training, export, analysis ----------------------------------

DataOpt = Annotated[
    str, typer.Option("--data", help="Synth output folder, or seed:<criterion> for a shipped seed set.")
]


def _recipe(config: str | None, overrides: dict):
    """Recipe YAML (optional) merged with the flags that were given (trl style)."""
    from aligners.config import read_yaml, validate
    from aligners.train_config import AlignerTrainConfig

    data = read_yaml(config) if config else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate(AlignerTrainConfig, data, config or "<flags>")


def _parse_layers(layers: str | None):
    if layers is None or layers in ("auto", "all"):
        return layers
    try:
        return [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes auto, all or a comma list like 20,21,22 (got {layers!r})") from None


@app.command("select-layers")
def select_layers_cmd(
    data: Annotated[list[str], typer.Option("--data", help="Repeat to compare data sets (folder or seed:<name>).")],
    out: Annotated[str, typer.Option(help="Folder for importance.json and importance.png.")],
    base: Annotated[str | None, typer.Option(help="Base model (default: recipe's).")] = None,
    config: Annotated[str | None, typer.Option(help="Aligner recipe YAML (LoRA shape, importance settings).")] = None,
    method: Annotated[list[str], typer.Option(help="gates (ILA) and/or grad-norm; repeat for both.")] = ["gates"],  # noqa: B006
    seed: Annotated[list[int], typer.Option(help="Repeat to measure stability across seeds.")] = [0],  # noqa: B006
) -> None:
    """Rank layers by importance for alignment (ILA) and report top-k overlaps.

    Example: aligners select-layers --data seed:harmless --data seed:polite --seed 0 --seed 1 --out runs/layers
    """
    from aligners.dataset import resolve_data
    from aligners.importance import METHODS, select_layers

    bad = [m for m in method if m not in METHODS]
    if bad:
        raise typer.BadParameter(f"unknown method(s) {bad}; choose from {sorted(METHODS)}")
    cfg = _recipe(config, {"base": base})
    sets = {spec: resolve_data(spec)["train"] for spec in data}
    result = select_layers(sets, cfg, out, methods=method, seeds=seed)
    for run in result["runs"]:
        typer.echo(f"{run['data']} {run['method']} seed={run['seed']}: top-{result['k']} = {run['top_k']}")
    for kind, o in result["overlap"].items():
        rho = "n/a" if o["rank_correlation"] is None else f"{o['rank_correlation']:.2f}"
        typer.echo(f"overlap {kind}: mean top-{result['k']} Jaccard {o['mean']:.2f}, mean Spearman rho of all scores {rho}")
    typer.echo(f"wrote {out}/importance.json and importance.png")


@app.command("train-aligner")
def train_aligner_cmd(
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
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
) -> None:
    """Train an aligner (LoRA on its important layers) for one criterion.

    Example: aligners train-aligner --data seed:harmless --layers auto --out artifacts/aligners/harmless
    """
    from aligners.dataset import resolve_data
    from aligners.train import train_aligner

    cfg = _recipe(config, {"base": base, "layers": _parse_layers(layers), "taia": taia, "max_steps": max_steps})
    if layers_from:
        import json

        from aligners.importance import top_k_layers

        result = json.loads(Path(layers_from).read_text())
        method = cfg.importance.method
        runs = [r for r in result["runs"] if r["data"] == data and r["method"] == method] or [
            r for r in result["runs"] if r["method"] == method
        ]
        if not runs:
            raise typer.BadParameter(f"{layers_from} has no {method!r} runs")
        mean = {int(layer): sum(r["scores"][layer] for r in runs) / len(runs) for layer in runs[0]["scores"]}
        cfg = cfg.model_copy(update={"layers": top_k_layers(mean, result["k"])})
    splits = resolve_data(data, seed=cfg.seed)
    manifest = train_aligner(cfg, splits["train"], splits["validation"], out, resume=resume)
    m = manifest["metrics"]
    typer.echo(
        f"trained {manifest['criterion']} aligner on layers {manifest['layers']}: {m['steps']} steps, "
        f"best eval loss {m['best_eval_loss']:.3f}, {m['wall_s']:.0f} s → {out}"
    )


@app.command("export")
def export_cmd(
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


@app.command("analyze")
def analyze_cmd(
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


@app.command("eval")
def eval_cmd(
    squad: Annotated[str, typer.Option(help="Squad recipe YAML.")],
    out: Annotated[str, typer.Option(help="Report folder.")],
    prompts: Annotated[
        str | None, typer.Option(help="Prompt file: .txt (one per line), .jsonl or .csv.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="harmful or benign: what the prompts are.")] = None,
    dev: Annotated[
        Path | None,
        typer.Option(help="Hand-labelled answers (e.g. evals/dev/answers.jsonl) instead of "
                     "--prompts/--kind: before judged by the hand labels, after by the "
                     "labelling rule's detectors, whose agreement is reported."),
    ] = None,
    column: Annotated[str, typer.Option(help="Field/column holding the prompt in JSONL/CSV.")] = "prompt",
    answer_column: Annotated[
        str | None, typer.Option(help="Field/column with stored answers (from any LLM) to evaluate instead of generating.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use the first N prompts.")] = None,
    eval_inspector: Annotated[
        list[str], typer.Option(help="criterion=DIR: an inspector trained on another split, to judge fairly.")
    ] = [],  # noqa: B006
    judge: Annotated[str | None, typer.Option(help="OpenAI-compatible URL of a pairwise judge model.")] = None,
    judge_model: Annotated[str, typer.Option(help="Model name at --judge.")] = "default",
    prompted_aligners: Annotated[
        bool, typer.Option("--prompted-aligners", help="Replace every aligner by the prompted base "
                           "(no adapter): the zero-shot baseline, with the same routing.")
    ] = False,
) -> None:
    """Measure a squad: flag/correct rates, misalignment before/after, do-no-harm, optional judge.

    Example: aligners eval --squad configs/squad/default.yaml --prompts prompts.txt --kind harmful --out report/

    Example: aligners eval --squad configs/squad/default.yaml --dev evals/dev/answers.jsonl --out report/
    """
    from aligners.backends import backend_from_spec
    from aligners.config import load_config
    from serve.config import SquadConfig
    from serve.evaluation import evaluate_squad, read_prompts
    from serve.pipeline import Squad

    def build_squad() -> Squad:
        recipe = load_config(squad, SquadConfig)
        if prompted_aligners:
            recipe = recipe.with_prompted_aligners()
        return Squad.from_config(recipe, config_file=squad)

    if dev is not None:
        if prompts or kind:
            raise typer.BadParameter("--dev replaces --prompts/--kind: give one or the other")
        from aligners.schema import AnswerRecord, read_jsonl
        from serve.dev_judge import evaluate_on_dev_set

        records = [r for r in read_jsonl(dev, AnswerRecord) if r.label_by == "hand"][:limit]
        if not records:
            raise typer.BadParameter(f"{dev} holds no hand-labelled answers (label_by: hand)")
        report = evaluate_on_dev_set(build_squad(), records, out)
        typer.echo(f"{report['answers']} hand-labelled answers → {out}/report.md")
        return
    if prompts is None:
        raise typer.BadParameter("give --prompts FILE --kind harmful|benign, or --dev FILE")
    if kind not in ("harmful", "benign"):
        raise typer.BadParameter(f"--kind must be harmful or benign, got {kind!r}")
    pairs = [item.split("=", 1) for item in eval_inspector]
    if any(len(p) != 2 for p in pairs):
        raise typer.BadParameter("--eval-inspector takes criterion=DIR")
    texts, answers = read_prompts(prompts, column, answer_column)
    judge_backend = backend_from_spec(judge, model=judge_model) if judge else None
    report = evaluate_squad(build_squad(), texts[:limit], kind, out, dict(pairs) or None, judge_backend,
                            answers=answers[:limit] if answers else None)
    typer.echo(f"{report['n']} {kind} prompts, {report['changed_rate']:.0%} changed → {out}/report.md")


# Commands defined next to the code they drive (light modules: heavy imports stay inside).
# (registration lines go here)
from synth.commands import synth

app.command("synth")(synth)
from inspectors.commands import inspect_answers, train_inspector

app.command("train-inspector")(train_inspector)
app.command("inspect")(inspect_answers)
from serve.commands import correct

app.command("correct")(correct)
from serve.commands import serve as serve_cmd

app.command("serve")(serve_cmd)


def main() -> None:
    from aligners.backends.base import BackendError
    from aligners.config import ConfigError
    from aligners.manifest import ManifestError
    from aligners.models import ModelNotFoundError

    try:
        app()
    except (ConfigError, ManifestError, ModelNotFoundError, BackendError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
