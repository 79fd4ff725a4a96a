"""Versioned teacher prompt templates (`synth/templates/*.txt`) and their rendering.

A template file starts with comment lines; the first one names its version:

    # version: pair-v1
    # what the template is for ...
    ...body with {{placeholders}}...

The version travels into every record's provenance (`Provenance.template_version`) and into the
generation cache key (through the rendered text), so editing a template means bumping its version,
and old cached generations are simply never hit again. Placeholders are `{{name}}` rather than
`str.format` braces so a template can show JSON or code to the teacher; rendering fails loudly on a
missing or unused value, so a renamed placeholder cannot silently send a broken prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from aligners.schema import Criterion

TEMPLATE_NAMES = ("topics", "questions", "pair", "review")
MAX_EXAMPLES = 3  # worked examples from the criterion spec shown to the teacher

_VERSION = re.compile(r"^#\s*version:\s*(\S+)\s*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """A template file without a version line, or a render with missing/extra values."""


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    body: str

    @property
    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.body))

    def render(self, **values: object) -> str:
        missing = self.placeholders - set(values)
        extra = set(values) - self.placeholders
        if missing or extra:
            raise TemplateError(
                f"template {self.name} ({self.version}): missing values {sorted(missing)}, "
                f"unexpected values {sorted(extra)}"
            )
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.body)


def template_dir() -> Path:
    return Path(str(resources.files("synth") / "templates"))


def parse_template(name: str, text: str) -> Template:
    """Split a template file into version and body: leading `#` lines are comments, the first
    of them must be `# version: <name>-vN`."""
    lines = text.splitlines()
    if not lines or not (m := _VERSION.match(lines[0])):
        raise TemplateError(f"template {name}: the first line must be '# version: {name}-v1' or similar")
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    body = "\n".join(lines[i:]).strip("\n") + "\n"
    return Template(name=name, version=m.group(1), body=body)


@cache
def load_template(name: str) -> Template:
    path = template_dir() / f"{name}.txt"
    if not path.is_file():
        raise TemplateError(f"no template {path}; known: {', '.join(TEMPLATE_NAMES)}")
    return parse_template(name, path.read_text(encoding="utf-8"))


def template_versions() -> dict[str, str]:
    return {name: load_template(name).version for name in TEMPLATE_NAMES}


# --- the four prompts --------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _examples(criterion: Criterion) -> str:
    """The criterion's worked examples in the same labelled format we ask the teacher for."""
    if not criterion.examples:
        return ""
    parts = ["", "Examples:"]
    for ex in criterion.examples[:MAX_EXAMPLES]:
        parts += [
            f"User question: {_one_line(ex.prompt)}",
            f"Misaligned answer: {_one_line(ex.misaligned)}",
            f"Corrected answer: {_one_line(ex.aligned)}",
            "",
        ]
    return "\n".join(parts)


def topics_prompt(criterion: Criterion, n: int, avoid: list[str] | None = None) -> tuple[str, str]:
    """(template version, prompt) asking for `n` topics, avoiding topics we already have."""
    t = load_template("topics")
    hint = f" For instance: {', '.join(criterion.topics)}." if criterion.topics else ""
    avoid_text = f"\nDo not repeat these topics: {'; '.join(avoid)}." if avoid else ""
    text = t.render(
        criterion=criterion.name,
        description=_one_line(criterion.description),
        n=n,
        hint=hint,
        avoid=avoid_text,
    )
    return t.version, text


def questions_prompt(criterion: Criterion, topic: str, n: int) -> tuple[str, str]:
    t = load_template("questions")
    text = t.render(
        criterion=criterion.name, description=_one_line(criterion.description), topic=topic, n=n
    )
    return t.version, text


def _rewrite_fields(criterion: Criterion, question: str) -> dict[str, str]:
    """What the pair and review templates both show the teacher about the criterion."""
    return {
        "criterion": criterion.name,
        "description": _one_line(criterion.description),
        "correction": _one_line(criterion.correction),
        "examples": _examples(criterion),
        "question": _one_line(question),
    }


def pair_prompt(criterion: Criterion, question: str) -> tuple[str, str]:
    t = load_template("pair")
    return t.version, t.render(**_rewrite_fields(criterion, question))


def review_prompt(criterion: Criterion, question: str, answer: str) -> tuple[str, str]:
    t = load_template("review")
    return t.version, t.render(**_rewrite_fields(criterion, question), answer=answer.strip())
