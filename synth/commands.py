"""`aligners synth`: the CLI face of synth/pipeline.py (imports stay light until the command runs)."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path
from typing import Annotated

import typer

_RESUME_HINT = "finished generations are cached in {out}/cache; rerun with --resume to continue"


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _build_model(
    spec: str,
    served_name: str | None,
    flags: tuple[str, str],
    concurrency: int | None,
    batch_size: int | None = None,
):
    """A `pipeline.Model` from a CLI spec: http(s) URL (+ served model name), backend YAML
    (configs/backends/*.yaml: any backend, e.g. vLLM in-process), or a local model name."""
    from aligners.backends import backend_from_spec, build_backend
    from aligners.config import BACKEND_CONFIG, load_config
    from synth.pipeline import Model

    if spec.startswith(("http://", "https://")):
        if not served_name:
            _fail(f"{flags[0]} is a URL: also pass {flags[1]} NAME (the model name the server serves)")
        overrides = {"model": served_name}
        if concurrency:
            overrides["concurrency"] = concurrency
        return Model(backend_from_spec(spec, **overrides), served_name)
    if spec.endswith((".yaml", ".yml")) and Path(spec).is_file():
        cfg = load_config(spec, BACKEND_CONFIG)
        if concurrency and cfg.type == "openai_http":
            cfg = cfg.model_copy(update={"concurrency": concurrency})
        return Model(build_backend(cfg), cfg.model)
    local = {"max_batch_size": batch_size} if batch_size else {}
    return Model(backend_from_spec(spec, **local), spec)


def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (must be empty unless --resume).")],
    criterion: Annotated[
        Path | None, typer.Option(help="Criterion spec, e.g. configs/criteria/harmless.yaml.")
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher: registry name, HF id/path, http(s) URL of an OpenAI-compatible "
            "server (with --teacher-model), or a backend YAML (configs/backends/*.yaml)."
        ),
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option(help="Served model name when --teacher is a URL.")
    ] = None,
    n_topics: Annotated[int | None, typer.Option(min=1, help="Topics to generate.")] = None,
    per_topic: Annotated[int | None, typer.Option(min=1, help="Questions per topic.")] = None,
    harvest_with: Annotated[
        str | None,
        typer.Option(
            help="Harvest mode: answer the questions with this base model (same forms as "
            "--teacher); the teacher then critiques and corrects the real answers."
        ),
    ] = None,
    harvest_model: Annotated[
        str | None, typer.Option(help="Served model name when --harvest-with is a URL.")
    ] = None,
    pairs: Annotated[
        list[str] | None,
        typer.Option(
            "--pairs",
            help="Hand-written pairs instead of a teacher (repeatable): seed:NAME for a shipped "
            "seed set (harmless, no-pii, polite), or your own JSONL (prompt, misaligned, aligned; "
            "optional critique, topic; misaligned == aligned marks a good answer to keep) — name "
            "its criterion with --criterion-name."
        ),
    ] = None,
    answers: Annotated[
        list[Path] | None,
        typer.Option(
            "--answers",
            help="Labelled real answers (AnswerRecord JSONL, e.g. a harvest's answers.jsonl; "
            "repeatable) made into aligner pairs: a good answer is kept as is, a misaligned one "
            "gets a written correction (synth/corrections.py). Alone, or added to --pairs; "
            "dev-split answers are never used.",
        ),
    ] = None,
    corrections: Annotated[
        list[Path] | None,
        typer.Option(
            "--corrections",
            help="Answers rewritten by hand paragraph by paragraph (WrittenCorrection JSONL, "
            "repeatable; e.g. data/corrections/polite.jsonl): each paragraph becomes a pair, "
            "corrected or kept (synth/paragraph_pairs.py), and replaces the template correction "
            "of the --answers answer it corrects. Alone, or added to --pairs/--answers.",
        ),
    ] = None,
    answer_labels: Annotated[
        str,
        typer.Option(help="With --answers: any (rule labels too) or hand (answers to harmful "
                     "requests only where a person labelled them)."),
    ] = "any",
    criterion_name: Annotated[
        str | None,
        typer.Option(help="Criterion name for --pairs FILE or --answers, e.g. concise (default "
                     "with --pairs seed:NAME: NAME)."),
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            help="Prompt file instead of teacher-made topics and questions: a .jsonl of "
            '{"prompt": ...} objects, a .txt with one prompt per line, or `bank` / '
            "`bank:harmless,benign` for the shipped prompt bank. With --harvest-with and no "
            "--teacher, only the real answers are harvested (OUT/answers.jsonl)."
        ),
    ] = None,
    only_split: Annotated[
        str | None,
        typer.Option(help="Keep only the prompts of this bank split: dev or train."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="SynthConfig recipe, e.g. configs/synth/default.yaml.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (sampling seeds, splits).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Requests per backend call.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="HTTP requests in flight (default: batch size).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue a run in --out, reusing its cached generations.")
    ] = False,
    cached_only: Annotated[
        bool,
        typer.Option(help="Harvest mode with --resume: generate nothing, rewrite answers.jsonl "
                     "from the cached answers and the hand labels (hand-labels.jsonl)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate (misaligned, critique, corrected) training pairs for one criterion.

    A teacher LLM proposes topics, then questions per topic, then a misaligned answer, a \
critique and a corrected answer per question (the Aligners paper's recipe). With \
--harvest-with, a real base model answers the questions and the teacher critiques and \
corrects those answers, or keeps them when they already satisfy the criterion. Duplicate \
and near-duplicate questions, too-short or too-long texts and near-identical corrections \
are dropped; the rest is split by topic. Generations are cached in OUT/cache, so a killed \
run continues with --resume.

    Examples:

    aligners synth --criterion configs/criteria/harmless.yaml --teacher http://127.0.0.1:8000/v1 --teacher-model Qwen/Qwen2.5-7B-Instruct --n-topics 20 --per-topic 10 --out data/harmless

    aligners synth --criterion configs/criteria/polite.yaml --teacher smollm2-135m-instruct --harvest-with smollm2-135m-instruct --n-topics 4 --per-topic 5 --out data/polite

    aligners synth --pairs seed:harmless --out data/harmless-seed

    aligners synth --pairs my_pairs.jsonl --criterion-name concise --out data/concise

    aligners synth --prompts bank:harmless,benign --harvest-with smollm2-135m-instruct --config configs/synth/harvest-bank.yaml --out data/harvest
    """
    from aligners.backends.base import BackendError
    from aligners.config import ConfigError, load_config, load_criterion, validate
    from aligners.models import ModelNotFoundError
    from synth.config import SynthConfig

    seed_sets = [p.removeprefix("seed:") for p in pairs or [] if p.startswith("seed:")]
    pair_files = [Path(p) for p in pairs or [] if not p.startswith("seed:")]
    handmade = pairs or answers or corrections
    if len(seed_sets) > 1:
        _fail("give at most one --pairs seed:NAME (each seed set carries the shared benign pairs)")
    if handmade and (criterion or teacher or harvest_with or prompts):
        _fail(
            "--pairs/--answers/--corrections use written pairs and labelled answers: do not combine "
            "them with --criterion/--teacher/--harvest-with/--prompts"
        )
    criterion_name = criterion_name or (seed_sets[0] if seed_sets else None)
    if handmade and not criterion_name:
        _fail("--pairs FILE/--answers/--corrections need --criterion-name NAME (the criterion they teach, e.g. concise)")
    harvest_only = bool(prompts and harvest_with and not teacher)
    if not handmade and not harvest_only and not (criterion and teacher):
        _fail(
            "pass --criterion FILE and --teacher MODEL, or --prompts FILE --harvest-with MODEL "
            "(real answers only), or --pairs seed:NAME|FILE (hand-written pairs)"
        )
    if only_split not in (None, "dev", "train"):
        _fail(f"--only-split must be dev or train, got {only_split!r}")
    if only_split and not prompts:
        _fail("--only-split filters a prompt file: use it with --prompts")
    if cached_only and not (harvest_only and resume):
        _fail("--cached-only rewrites a harvest's answers: use it with --prompts, --harvest-with "
              "and --resume")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        n = sum(1 for _ in out.iterdir())
        _fail(
            f"--out {out} is not empty ({n} entr{'y' if n == 1 else 'ies'}); pass --resume to "
            "continue the run stored there (its cached generations are reused), or choose an "
            "empty folder"
        )

    try:
        cfg = load_config(config, SynthConfig) if config else SynthConfig()
        flags = {"n_topics": n_topics, "per_topic": per_topic, "seed": seed, "batch_size": batch_size}
        cfg = validate(
            SynthConfig,
            {**cfg.model_dump(), **{k: v for k, v in flags.items() if v is not None}},
            "command-line flags",
        )
        if handmade:
            stats = _from_written(seed_sets, pair_files, answers, corrections or [], answer_labels, criterion_name, out, cfg)
        elif harvest_only:
            stats = _harvest(prompts, only_split, harvest_with, harvest_model, cfg, out, progress,
                             cached_only)
            return _harvest_summary(out, stats)
        else:
            from synth.pipeline import SynthAborted, SynthError, SynthRun

            crit = load_criterion(criterion)
            questions = None
            if prompts:
                from synth.bank import load_prompts
                from synth.pipeline import Question

                records = _select(load_prompts(prompts, crit.name), only_split)
                questions = [Question(r.topic, r.prompt) for r in records]
            conc = concurrency or cfg.batch_size
            teacher_m = _build_model(teacher, teacher_model, ("--teacher", "--teacher-model"), conc)
            harvest_m = None
            if harvest_with:
                if harvest_with == teacher and (harvest_model or teacher_model) == teacher_model:
                    harvest_m = teacher_m  # one model in memory, both roles
                else:
                    harvest_m = _build_model(
                        harvest_with, harvest_model, ("--harvest-with", "--harvest-model"), conc
                    )
            echo = functools.partial(typer.echo, err=True)
            try:
                stats = SynthRun(
                    crit, cfg, teacher_m, out, harvest_m, progress, echo, questions
                ).run()
            except SynthAborted as exc:
                _fail(f"{exc}\n{_RESUME_HINT.format(out=out)}", 1)
            except KeyboardInterrupt:
                _fail(f"interrupted\n{_RESUME_HINT.format(out=out)}", 130)
            except SynthError as exc:
                _fail(str(exc), 1)
    except (ConfigError, ModelNotFoundError, FileNotFoundError, BackendError, ValueError) as exc:
        _fail(str(exc))
    _summary(out, stats)


def _from_written(seed_sets, pair_files, answers, corrections, answer_labels, criterion_name, out, cfg) -> dict:
    """Seed set and/or the user's own pairs, plus pairs made from labelled answers and from
    answers corrected by hand paragraph by paragraph."""
    from aligners.dataset import load_seed, load_user_pairs
    from aligners.schema import AnswerRecord, WrittenCorrection, read_jsonl
    from synth.corrections import pairs_from_answers
    from synth.paragraph_pairs import pairs_from_corrections
    from synth.pipeline import run_from_pairs

    written = [p for name in seed_sets for p in load_seed(name)]
    written += [p for f in pair_files for p in load_user_pairs(f, criterion_name)]
    rewritten, by_unit = pairs_from_corrections(
        criterion_name, [c for f in corrections for c in read_jsonl(f, WrittenCorrection)])
    if corrections and not rewritten:
        raise ValueError(f"no correction in {', '.join(map(str, corrections))} is usable for criterion "
                         f"{criterion_name!r} (train split, facts kept)")
    made, methods = [], {}
    if answers:
        records = [r for f in answers for r in read_jsonl(f, AnswerRecord)]
        made, methods = pairs_from_answers(criterion_name, records, answer_labels,
                                           corrected={p.source.answer_id for p in rewritten if p.source.answer_id})
        if not made and not rewritten:
            raise ValueError(
                f"no answer in {', '.join(map(str, answers))} is usable for criterion "
                f"{criterion_name!r} (answers to that criterion's prompts, train split)"
            )
    mode = "+".join(m for m, on in (("seed", seed_sets), ("user-pairs", pair_files),
                                    ("answers", answers), ("corrections", corrections)) if on)
    extra = {"answers": {"files": [str(f) for f in answers], "labels": answer_labels,
                         "pairs_by_method": methods}} if answers else {}
    if corrections:
        extra["corrections"] = {"files": [str(f) for f in corrections], "units": by_unit}
    return run_from_pairs(written, criterion_name, mode, out, cfg, answer_pairs=made, extra=extra,
                          rewritten_pairs=rewritten)


def _select(records: list, only_split: str | None) -> list:
    if only_split:
        records = [r for r in records if r.split == only_split]
        if not records:
            _fail(f"no prompt of the file is in split {only_split!r}")
    return records


def _harvest(prompts, only_split, harvest_with, harvest_model, cfg, out, progress,
             cached_only=False) -> dict:
    """Prompt file → real answers of the --harvest-with model (no teacher), labelled by rule."""
    from synth.bank import load_prompts
    from synth.harvest import HarvestRun
    from synth.pipeline import SynthAborted

    records = _select(load_prompts(prompts), only_split)
    model = _build_model(
        harvest_with, harvest_model, ("--harvest-with", "--harvest-model"), cfg.batch_size,
        cfg.batch_size,
    )
    so_far = f"the answers generated so far are in {out / 'answers.jsonl'}"
    # A stop request (Ctrl-C, `kill`, a scheduler's SIGTERM; SIGINT also when started in the
    # background, where shells ignore it) ends the run the same way: answers so far are written.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _interrupt)
    try:
        return HarvestRun(records, cfg, model, out, progress).run(generate=not cached_only)
    except SynthAborted as exc:
        _fail(f"{exc}\n{so_far}; {_RESUME_HINT.format(out=out)}", 1)
    except KeyboardInterrupt:
        _fail(f"interrupted: {so_far}; {_RESUME_HINT.format(out=out)}", 130)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _harvest_summary(out: Path, stats: dict) -> None:
    typer.echo(
        f"{stats['answers']} answers to {stats['prompts']} prompts ({stats['truncated']} cut at "
        f"max_tokens) → {out / 'answers.jsonl'}"
    )
    if not stats["complete"]:
        typer.echo(f"partial: {stats['answers']} of {stats['planned']} planned answers; --resume "
                   "(without --cached-only) generates the rest")
    typer.echo("labels (criterion/intent/label): " + json.dumps(stats["by_label"]))
    typer.echo(f"wall time {stats['wall_time_s']} s; details in {out / 'stats.json'}")


def _summary(out: Path, stats: dict) -> None:
    counts, splits = stats["counts"], stats["splits"]
    typer.echo(
        f"{counts['pairs_kept']} pairs ({counts['needs_correction']} to correct, "
        f"{counts['keep_as_is']} keep-as-is) → {out}  "
        f"[train {splits['train']} / validation {splits['validation']} / test {splits['test']}]"
    )
    dropped = {k: v for k, v in stats.get("dropped", {}).items() if v}
    if dropped:
        typer.echo("dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    bad = {k: v for k, v in stats.get("unparseable", {}).items() if v}
    if bad:
        typer.echo("unparseable: " + ", ".join(f"{k} {v}" for k, v in bad.items()) + " (see errors.jsonl)")
    typer.echo(f"wall time {stats['wall_time_s']} s; details in {out / 'stats.json'}")
