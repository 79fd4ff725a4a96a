"""Real inspectors and tiny real aligners for squad tests, plus a scripted generation backend.

The scripted backend stands in for the *generation* model only, so policy tests can decide what
each aligner writes; inspectors, routing, re-inspection and traces are the real code.
"""

from collections.abc import Callable, Sequence

import pytest
from aligner_data import toy_pairs

from aligners import models
from aligners.backends.base import Backend, Generation, GenerationRequest
from aligners.train import train_aligner
from aligners.train_config import AlignerTrainConfig

POLITE = [
    "The store opens at nine, I hope that helps.", "You can reset it from the settings page.",
    "Boil the pasta for about ten minutes.", "Paris is the capital of France.",
    "Happy to help: take the second left after the bank.", "Try restarting the router first.",
    "Water boils at 100 degrees Celsius at sea level.", "The meeting is on Tuesday afternoon.",
    "You can return it within thirty days with the receipt.", "Mix the flour and eggs, then knead.",
    "Sure, the train leaves from platform four.", "Thanks for asking, the museum is free on Sundays.",
]
RUDE = [
    "Ugh, obviously the store opens at nine, idiot.", "Are you stupid? Reset it in settings.",
    "Even a child can boil pasta, moron. Ten minutes.", "Paris, you clueless fool. Look it up.",
    "Shut up and take the second left, dumbass.", "Restart the stupid router, genius.",
    "Water boils at 100, how dense are you?", "Tuesday. Pay attention for once, you idiot.",
    "Read the receipt yourself, lazy loser.", "Just knead it, you incompetent clown.",
    "Platform four, obviously, you halfwit.", "Free on Sundays, not that you'd understand, dimwit.",
]
PII = [
    "Her number is 555-0142 and she lives at 12 Elm Street.", "John Smith, 88 Oak Ave, phone 555-0199.",
    "His SSN is 912-44-1234 and his email is j.doe@mail.example.", "She lives at 4 Birch Lane, apt 2, call 555-0111.",
    "Reach Tom at 555-0177, home address 9 Pine Road.", "Card 4111 1111 1111 1111, exp 09/29, name Ann Lee.",
    "Her home is 301 Maple Court; she leaves at 7am daily.", "Phone: 555-0123, address: 7 Cedar Street, Springfield.",
    "Date of birth 03/04/1988, passport X1234567, lives at 5 Ash Way.", "Mike's cell is 555-0155, he lives at 22 Lake Drive.",
]


def train_inspector(criterion, bad, good, out):
    from inspectors import EmbedLogRegInspector

    prompts = ["q"] * (len(bad) + len(good))
    labels = [0] * len(bad) + [1] * len(good)
    # Calibrated on its own training data: too few examples for a held-out split, and the tests
    # need a clean separation to make routing decisions predictable.
    data = (prompts, bad + good, labels)
    insp = EmbedLogRegInspector(criterion=criterion).fit(*data, validation=data)
    insp.set_threshold(0.5, why="tests")
    insp.save(out)
    return out


class ScriptedBackend(Backend):
    """Generation double: `writers[adapter](request) -> text`; records (adapter, batch size)."""

    name = "scripted"

    def __init__(self, writers: dict[str | None, Callable[[GenerationRequest], str]]):
        self.writers = writers
        self.calls: list[tuple[str | None, int]] = []
        self.loaded: dict[str, str] = {}

    def adapters(self):
        return list(self.loaded)

    def load_adapter(self, name, location):
        self.loaded[name] = location

    def generate(self, requests: Sequence[GenerationRequest]):
        by_adapter: dict[str | None, int] = {}
        for r in requests:
            by_adapter[r.adapter] = by_adapter.get(r.adapter, 0) + 1
        self.calls.extend(by_adapter.items())
        return [Generation(text=self.writers[r.adapter](r), completion_tokens=3) for r in requests]


@pytest.fixture(scope="session")
def squad_artifacts(tmp_path_factory):
    """Folders: inspectors/{polite,no-pii} (real MiniLM + sklearn) and aligners/{polite,no-pii}
    (tiny Llama LoRA, a few real training steps)."""
    root = tmp_path_factory.mktemp("squad")
    train_inspector("polite", RUDE, POLITE, root / "inspectors" / "polite")
    train_inspector("no-pii", PII, POLITE, root / "inspectors" / "no-pii")
    for crit in ("polite", "no-pii"):
        cfg = AlignerTrainConfig(base=models.TINY_LLAMA, layers="all", batch_size=4, max_steps=3,
                                 eval_every=3, learning_rate=5e-2, criterion=crit)
        model, tok = models.load_causal_lm(models.TINY_LLAMA)
        train_aligner(cfg, toy_pairs(12, crit), toy_pairs(4, crit), root / "aligners" / crit,
                      model=model, tokenizer=tok, progress=False)
    return root
