"""ILA layer-selection stability from an importance.json written by `aligners select-layers`:
Jaccard overlap of the top-k sets (and Spearman correlation of all layer scores) across seeds,
criteria (data sets) and methods (gates vs the grad-norm baseline), for ILA's gates alone, plus
each run's top-k. Prints one JSON object.

    python benchmarks/ila_stability.py artifacts/layers/importance.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from aligners.importance import overlaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("importance", help="importance.json from aligners select-layers")
    result = json.loads(Path(ap.parse_args().importance).read_text())
    gates = [r for r in result["runs"] if r["method"] == "gates"]
    counts = Counter(layer for r in gates for layer in r["top_k"])
    print(json.dumps({
        "benchmark": "ila_stability", "base": result["base"], "k": result["k"],
        "runs": [{key: r[key] for key in ("data", "method", "seed", "top_k")} for r in result["runs"]],
        "overlap": result["overlap"],
        # ILA alone (the paper's ~0.9 is about its gates): the mixed figures above average in grad-norm
        "gates_overlap": {kind: o for kind, o in overlaps(gates).items() if kind != "across_methods"},
        "gate_top_k_frequency": {str(layer): n / len(gates) for layer, n in sorted(counts.items())},
    }, indent=2))


if __name__ == "__main__":
    main()
