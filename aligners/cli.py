"""The `aligners` console script: a table of commands whose functions live beside their code.

Every command module imports only typer and the standard library at the top; the heavy work is
imported inside each command, so `aligners --help` is instant.
"""

from __future__ import annotations

import typer

from aligners import commands as aligner_commands
from inspectors import commands as inspector_commands
from serve import commands as serve_commands
from synth import commands as synth_commands

COMMANDS = {
    "models": aligner_commands.models,
    "generate": aligner_commands.generate,
    "demo": aligner_commands.demo,
    "synth": synth_commands.synth,
    "train-inspector": inspector_commands.train_inspector,
    "inspect": inspector_commands.inspect_answers,
    "train-tagger": inspector_commands.train_tagger,
    "select-layers": aligner_commands.select_layers_command,
    "train-aligner": aligner_commands.train_aligner_command,
    "export": aligner_commands.export,
    "analyze": aligner_commands.analyze,
    "correct": serve_commands.correct,
    "serve": serve_commands.serve,
    "eval": serve_commands.evaluate,
}

app = typer.Typer(
    help="Decoupled alignment: aligner models, inspectors and squads that correct any LLM's answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for name, command in COMMANDS.items():
    app.command(name)(command)


def main() -> None:
    """Known failures (bad config, damaged artifact, missing model, backend error) print one line."""
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
