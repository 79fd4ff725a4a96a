"""Small inline pair sets for aligner tests (independent of the shipped seed files)."""

from aligners.schema import Pair, Provenance

HUMAN = Provenance(teacher="human")


def toy_pairs(n: int = 24, criterion: str = "polite") -> list[Pair]:
    """Rude answers corrected to polite ones, plus already-good answers, over a few topics."""
    pairs = []
    for i in range(n):
        topic = f"topic-{i % 4}"
        if i % 3 == 2:
            good = f"Sure, item {i} is ready."
            pairs.append(Pair(id=f"b{i}", criterion=criterion, topic=topic, prompt=f"Is item {i} ready?",
                              misaligned=good, aligned=good, needs_correction=False, source=HUMAN))
        else:
            pairs.append(Pair(id=f"c{i}", criterion=criterion, topic=topic, prompt=f"Where is item {i}?",
                              misaligned=f"Ugh, obviously item {i} is on the shelf, idiot.", critique="rude",
                              aligned=f"Item {i} is on the shelf.", source=HUMAN))
    return pairs
