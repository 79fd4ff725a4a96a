"""CLI commands of serve/ (light module: the squad and its models load inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def correct(
    squad: Annotated[str, typer.Option(help="Squad recipe, e.g. configs/squad/default.yaml.")],
    out: Annotated[str, typer.Option(help="Output JSONL (errors go to OUT.errors.jsonl).")],
    input_file: Annotated[str | None, typer.Option("--in", help="Input .jsonl or .parquet with id, prompt[, response].")] = None,
    dataset: Annotated[str | None, typer.Option(help="Input HF dataset folder (save_to_disk) instead of --in.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run into the same OUT (same input and "
                                         "chunking), or check a finished OUT and repair a damaged end.")] = False,
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data actor pool).")] = "local",
    chunk_size: Annotated[int, typer.Option(min=1, help="Records per committed chunk.")] = 64,
    max_chars: Annotated[int, typer.Option(min=1, help="Records with longer prompt+response are errors.")] = 20_000,
    actors: Annotated[int, typer.Option(min=1, help="Ray: squads in the actor pool.")] = 2,
    cpus_per_actor: Annotated[float, typer.Option(help="Ray: CPUs reserved per actor (0.5 on 2-core hosts).")] = 0.5,
    ray_address: Annotated[str | None, typer.Option(help="Ray: cluster address; default starts a local Ray.")] = None,
    pairs_out: Annotated[str | None, typer.Option(help="Also write every changed answer as a preference pair "
                                                  "(prompt, chosen, rejected + criteria and scores), .jsonl or "
                                                  ".parquet, ready for datasets and trl's DPOTrainer.")] = None,
) -> None:
    """Correct stored answers with a squad; resumable after a crash, bad records to an errors file.

    Example: aligners correct --squad configs/squad/default.yaml --in answers.jsonl --out corrected.jsonl

    Example: aligners correct --squad configs/squad/default.yaml --in answers.jsonl --out corrected.jsonl --pairs-out pairs.parquet
    """
    if (input_file is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --in FILE or --dataset DIR")
    from serve.pairs import PAIR_FORMATS, pairs_from_batch_output, write_pairs

    if pairs_out is not None and not pairs_out.endswith(PAIR_FORMATS):
        raise typer.BadParameter(f"--pairs-out must end in {' or '.join(PAIR_FORMATS)}, got {pairs_out!r}")
    source = input_file or dataset
    if engine == "ray":
        from serve.ray_batch import run_ray_batch

        if resume:
            raise typer.BadParameter("--resume is for --engine local; a Ray run is re-run whole")
        summary = run_ray_batch(squad, source, out, actors=actors, cpus_per_actor=cpus_per_actor,
                                batch_size=chunk_size, max_chars=max_chars, address=ray_address)
    elif engine == "local":
        from serve.batch import ResumeError, run_batch
        from serve.pipeline import Squad

        try:
            summary = run_batch(Squad.from_config(squad), source, out, resume=resume, chunk_size=chunk_size, max_chars=max_chars)
        except (FileExistsError, ResumeError) as exc:
            raise typer.BadParameter(str(exc)) from None
    else:
        raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
    if pairs_out is not None:
        summary["preference_pairs"] = write_pairs(pairs_from_batch_output(out), pairs_out)
    typer.echo(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


def serve(
    squad: Annotated[str | None, typer.Option(help="Squad recipe, e.g. configs/squad/default.yaml (overrides the config's).")] = None,
    config: Annotated[str | None, typer.Option(help="Server recipe, e.g. configs/serve/default.yaml; flags override it.")] = None,
    upstream: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL that answers prompts, e.g. http://127.0.0.1:8080/v1.")] = None,
    upstream_model: Annotated[str | None, typer.Option(help="Model name the upstream serves.")] = None,
    upstream_key: Annotated[str | None, typer.Option(help="Upstream key: a key, env:VAR, or 'passthrough' (forward the client's).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1; the config's host if set).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="Accepted Bearer key (repeat; env:VAR allowed). None = open.")] = None,
    no_squad: Annotated[bool, typer.Option("--no-squad", help="Passthrough proxy to --upstream, no correction.")] = False,
) -> None:
    """Serve an OpenAI-compatible API whose answers are corrected by a squad.

    Point any OpenAI client (official SDK, LangChain, curl) at http://HOST:PORT/v1; see docs/server.md.

    Example: aligners serve --squad configs/squad/default.yaml --upstream http://127.0.0.1:8080/v1 --upstream-model smollm2 --api-key env:ALIGNERS_KEY
    """
    from aligners.config import read_yaml, validate
    from serve.app import serve as run_server
    from serve.server_config import ServerConfig

    data = read_yaml(config) if config else {}
    flags = {"squad": squad, "upstream": upstream, "upstream_model": upstream_model, "upstream_key": upstream_key,
             "host": host, "port": port, "api_keys": api_key or None}
    data.update({k: v for k, v in flags.items() if v is not None})
    if no_squad:
        data["squad"] = None
    cfg = validate(ServerConfig, data, config or "<flags>")
    # a squad named on the command line is relative to the working directory, not to --config
    typer.echo(f"serving {cfg.squad or 'no squad (passthrough)'} on http://{cfg.host}:{cfg.port}/v1")
    run_server(cfg, config_file=None if squad else config)


def evaluate(
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
