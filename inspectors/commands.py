"""CLI commands `aligners train-inspector` and `aligners inspect` (registered in aligners/cli.py).

Only typer and the standard library are imported here; numpy, sklearn, torch and the encoder are
imported inside the commands so `aligners --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aligners.commands import SetOpt

THRESHOLD_GOOD = ("all", "benign", "benign-all-criteria")  # train-inspector --threshold-good


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


def train_inspector(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the inspector into.")],
    data: Annotated[
        str,
        typer.Option("--data", help="Synth output folder (train/validation/test.jsonl), or seed:NAME for "
                     "a shipped seed set (harmless, no-pii, polite) split by topic."),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Inspector recipe (configs/inspectors/*.yaml). Default: embed-logreg defaults.",
        ),
    ] = None,
    set_: SetOpt = None,
    criterion: Annotated[
        str | None,
        typer.Option(
            help="Train only this criterion's pairs (default: the one criterion in the data)."
        ),
    ] = None,
    answers: Annotated[
        list[Path] | None,
        typer.Option(
            "--answers",
            help="Labelled real answers to add (AnswerRecord JSONL, e.g. a harvest's answers.jsonl; "
            "repeatable). Split by topic like the pairs; dev-split answers are never used.",
        ),
    ] = None,
    answer_labels: Annotated[
        str,
        typer.Option(
            help="Which labels of the --answers to harmful requests of the criterion to learn "
            "from: any (the rule's too) or hand (only answers a person labelled).",
        ),
    ] = "any",
    corrections: Annotated[
        list[Path] | None,
        typer.Option(
            "--corrections",
            help="Answers corrected by hand paragraph by paragraph (WrittenCorrection JSONL, e.g. "
            "data/corrections/polite.jsonl; repeatable): each original answer and each changed paragraph "
            "is learned as misaligned, its rewrite as aligned (training split only).",
        ),
    ] = None,
    dev: Annotated[
        Path | None,
        typer.Option(
            "--dev",
            help="Hand-labelled dev set (AnswerRecord JSONL, e.g. evals/dev/answers.jsonl): "
            "reported beside the test split, never trained on.",
        ),
    ] = None,
    threshold_on: Annotated[
        str,
        typer.Option(
            help="Where the recipe's threshold target is met: validation (default) or dev (the "
            "hand-labelled --dev set: thresholds may be chosen on it, models never trained on it)."
        ),
    ] = "validation",
    threshold_good: Annotated[
        str,
        typer.Option(
            help="Which good answers an fpr threshold target counts: all, or benign (only good "
            "answers to benign requests: their false flags are the over-refusals; a flagged "
            "refusal is only rewritten into a refusal), or benign-all-criteria (with --threshold-on "
            "dev: also the dev set's good answers to the other criteria's benign requests, for a "
            "criterion whose fix is a refusal, harmless, whose squad member acts on those too)."
        ),
    ] = "all",
    seed: Annotated[int, typer.Option(help="Run seed: the topic split of a seed:NAME data set.")] = 0,
    plots: Annotated[
        bool, typer.Option(help="Write reliability.png and scores.png for the test split.")
    ] = True,
) -> None:
    """Train, calibrate and evaluate an inspector for one criterion; save it with its metrics.

    Trains on train, calibrates and picks the threshold on validation, reports on test.

    Example: aligners train-inspector --data seed:polite --config configs/inspectors/embed-logreg.yaml --out artifacts/inspectors/polite
    """
    from aligners.config import ConfigError, apply_overrides, read_yaml, validate
    from aligners.schema import RecordError

    try:
        from inspectors.config import INSPECTOR_CONFIG
        from inspectors.data import (
            benign_good_elsewhere,
            criterion_of,
            data_source,
            dev_set_examples,
            load_training_data,
        )

        raw = read_yaml(config) if config else {}
        apply_overrides(raw, set_ or [])
        cfg = validate(INSPECTOR_CONFIG, raw, str(config) if config else "<defaults + --set>")
        td = load_training_data(
            **data_source(data), split_seed=seed, criterion=criterion,
            answer_files=answers or (), answer_labels=answer_labels, correction_files=corrections or (),
        )
        criterion = criterion or criterion_of(td.splits["train"] + td.splits["validation"])
        dev_examples = dev_set_examples(dev, criterion) if dev else None
        if threshold_on not in ("validation", "dev"):
            raise ValueError(f"--threshold-on must be validation or dev, got {threshold_on!r}")
        if threshold_on == "dev" and dev_examples is None:
            raise ValueError("--threshold-on dev needs --dev FILE")
        if threshold_good not in THRESHOLD_GOOD:
            raise ValueError(f"--threshold-good must be one of {', '.join(THRESHOLD_GOOD)}, got {threshold_good!r}")
        if threshold_good == "benign-all-criteria" and threshold_on != "dev":
            raise ValueError("--threshold-good benign-all-criteria reads the dev set's other criteria: "
                             "add --threshold-on dev")
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None

    from rich.console import Console
    from rich.table import Table

    from aligners.dataset import SPLITS, data_hash
    from inspectors.base import build_inspector
    from inspectors.metrics import reliability_diagram, score_histogram

    console = Console(stderr=True)
    train, val, test = (td.examples(s) for s in SPLITS)
    console.print(
        f"[bold]{cfg.type}[/] inspector for [bold]{criterion}[/] from {td.source}: "
        f"train {train.counts()}, validation {val.counts()}, test {test.counts()}"
    )
    est = build_inspector(cfg, criterion=criterion)
    try:  # data the model cannot be trained on, or an ensemble member it cannot use
        with console.status("training"):
            est.fit(*train.as_tuple(), validation=val.as_tuple(), intents=train.intents)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if threshold_on == "dev" or threshold_good != "all":
        chosen, where = (dev_examples, "dev set (hand labels)") if threshold_on == "dev" else (val, "validation split")
        if threshold_good != "all":
            chosen, where = chosen.without_good_risky(), f"{where}; good answers to benign requests only"
        if threshold_good == "benign-all-criteria":
            chosen = chosen + benign_good_elsewhere(dev, criterion)
            where = f"{where}, of every criterion"
        est.rethreshold(*chosen.as_tuple(), source=where)
    metrics = {"validation": est.evaluate(*val.as_tuple())}
    if len(test):
        metrics["test"] = est.evaluate(*test.as_tuple())
    if dev_examples is not None:
        metrics["dev"] = est.evaluate(*dev_examples.as_tuple())
    guard_reach = {} if getattr(est, "request_guard", None) is None else {
        name: est.request_guard_reach(ex.prompts, ex.intents)
        for name, ex in (("validation", val), ("test", test), ("dev", dev_examples))
        if ex is not None and len(ex)
    }
    est.save(
        out,
        metrics={**metrics, "request_guard": guard_reach} if guard_reach else metrics,
        training_data={
            "hash": data_hash(td.splits["train"]),
            "split_hashes": {s: data_hash(td.splits[s]) for s in SPLITS},
            "source": td.source,
            "pairs": {s: len(td.splits[s]) for s in SPLITS},
            "answers": {s: len(td.answers.get(s, [])) for s in SPLITS},
            "examples": {
                "train": train.counts(),
                "validation": val.counts(),
                "test": test.counts(),
            },
        },
    )
    if plots and len(test):
        scores = est.predict_proba(test.prompts, test.answers)[:, 1]
        reliability_diagram(
            test.labels, scores, Path(out) / "reliability.png", title=f"{criterion} (test)"
        )
        score_histogram(
            test.labels,
            scores,
            est.threshold_,
            Path(out) / "scores.png",
            title=f"{criterion} (test)",
        )

    table = Table(title=f"{criterion} inspector -> {out}")
    table.add_column("split")
    names = ("auroc", "auprc", "f1", "ece", "fpr", "recall")
    for name in names:
        table.add_column(name, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *("-" if m[k] is None else f"{m[k]:.3f}" for k in names))
    console.print(table)
    for split, reach in guard_reach.items():
        console.print(
            f"request guard on {split}: reaches {reach['benign_requests']['reached']:.1%} of benign and "
            f"{reach['risky_requests']['reached']:.1%} of risky requests"
        )
    console.print(f"threshold {est.threshold_:.4f}: {est.threshold_info_['why']}")


def inspect_answers(
    inspector: Annotated[
        Path, typer.Option("--inspector", help="Inspector folder (from train-inspector).")
    ],
    input_path: Annotated[
        Path,
        typer.Option(
            "--in", help="JSONL of answers: prompt, response, optional id (other fields are kept)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Scores JSONL; bad lines go to OUT.errors.jsonl.")
    ],
    batch_size: Annotated[int, typer.Option(min=1, help="Answers per scoring batch.")] = 64,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Override the inspector's stored threshold."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score existing answers with an inspector (nothing is generated): adds score, flagged, criterion.

    score = P(aligned); flagged = score < threshold.

    Malformed lines go to OUT.errors.jsonl with line numbers and reasons; the rest are scored.

    Example: aligners inspect --inspector artifacts/inspectors/polite --in answers.jsonl --out scores.jsonl
    """
    from inspectors.base import InspectorLoadError, load_inspector
    from inspectors.scoring import score_jsonl

    try:
        est = load_inspector(inspector)
        if threshold is not None:
            est.set_threshold(threshold, why="--threshold on the command line")
        summary = score_jsonl(est, input_path, out, batch_size=batch_size, progress=progress)
    except (InspectorLoadError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"scored {summary.scored} answers in {summary.seconds:.1f}s: {summary.flagged} flagged "
        f"({summary.criterion}, threshold {summary.threshold:.4f}) -> {summary.out}"
    )
    if summary.errors:
        typer.secho(
            f"{summary.errors} malformed line(s) skipped -> {summary.errors_path}",
            fg="yellow",
            err=True,
        )


def train_tagger(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the span tagger into.")],
    spans: Annotated[
        list[Path],
        typer.Option("--spans", help="Answers with spans marked by hand (SpanAnnotation JSONL, e.g. "
                     "data/spans/no-pii.jsonl; repeatable)."),
    ],
    config: Annotated[
        Path | None, typer.Option("--config", help="Tagger recipe (configs/taggers/*.yaml). Default: replace with [TYPE].")
    ] = None,
    set_: SetOpt = None,
    criterion: Annotated[
        str | None, typer.Option(help="Learn this criterion's marks (default: the one criterion in --spans).")
    ] = None,
    answers: Annotated[
        list[Path] | None,
        typer.Option("--answers", help="Labelled real answers (AnswerRecord JSONL; repeatable): the "
                     "criterion's good training-split answers are learned as answers to leave alone."),
    ] = None,
    corrections: Annotated[
        list[Path] | None,
        typer.Option("--corrections", help="Answers corrected by hand (WrittenCorrection JSONL; repeatable): "
                     "their rewritten answers are learned as answers to leave alone."),
    ] = None,
) -> None:
    """Train a span tagger: which characters of an answer to replace with a placeholder or delete.

    Reports out-of-fold token precision/recall, the share of marked spans found and of good answers
    it would change.

    Example: aligners train-tagger --spans data/spans/no-pii.jsonl --answers data/harvest-smollm2/answers.jsonl --config configs/taggers/no-pii.yaml --out artifacts/taggers/no-pii
    """
    from aligners.config import ConfigError, apply_overrides, read_yaml, validate
    from aligners.schema import (
        AnswerRecord,
        RecordError,
        SpanAnnotation,
        WrittenCorrection,
        read_jsonl,
    )

    try:
        from inspectors.config import SpanTaggerConfig
        from inspectors.span_data import tagger_examples

        raw = read_yaml(config) if config else {}
        apply_overrides(raw, set_ or [])
        cfg = validate(SpanTaggerConfig, raw, str(config) if config else "<defaults + --set>")
        marked = [r for f in spans for r in read_jsonl(f, SpanAnnotation)]
        named = sorted({r.criterion for r in marked})
        if criterion is None and len(named) != 1:
            raise ValueError(f"--spans hold criteria {named}: name one with --criterion")
        criterion = criterion or named[0]
        examples = tagger_examples(
            criterion, marked,
            [r for f in answers or () for r in read_jsonl(f, AnswerRecord)],
            [r for f in corrections or () for r in read_jsonl(f, WrittenCorrection)],
            max_clean=cfg.max_negative_answers, seed=cfg.random_state,
        )
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None

    from rich.console import Console

    from inspectors.spans import SpanTagger

    console = Console(stderr=True)
    console.print(f"span tagger for [bold]{criterion}[/] ({cfg.action}): {examples.counts()}")
    with console.status("reading hidden states and training"):
        tagger = SpanTagger(cfg, criterion).fit(examples.prompts, examples.answers, examples.spans)
    tagger.save(out, training_data={"files": [str(f) for f in [*spans, *(answers or ()), *(corrections or ())]],
                                    **examples.counts()})
    m = tagger.metrics_
    console.print(
        f"out of fold at threshold {tagger.threshold_:.3f}: token precision {m['token_precision']:.3f}, "
        f"recall {m['token_recall']:.3f}; {m['spans_found']:.1%} of {m['n_spans']} marked spans found, "
        f"{m['span_precision']:.1%} of the spans found overlap a mark; "
        f"{m['clean_answers_changed']:.1%} of {m['n_clean_answers']} good answers changed -> {out}"
    )
