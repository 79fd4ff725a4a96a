"""The `aligners` console script: one typer app, each command a thin wrapper over a typed function.

Heavy modules (torch, transformers) are imported inside the commands so `aligners --help` is instant.
"""

from __future__ import annotations

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
    max_tokens: Annotated[int, typer.Option(min=1, help="Answer length cap.")] = 96,
) -> None:
    """Run the offline demo on the embedded default model (no network, no GPU).

    Example: aligners demo
    """
    from aligners.demo import run_demo

    run_demo(max_tokens=max_tokens)


# Commands defined next to the code they drive (light modules: heavy imports stay inside).
# (registration lines go here)


def main() -> None:
    from aligners.config import ConfigError
    from aligners.models import ModelNotFoundError

    try:
        app()
    except (ConfigError, ModelNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
