"""Time to a trained aligner: wall-clock to the early-stopping point and the correction it buys.

Arms per criterion, on the same training pairs, budget and early-stopping rule (each in its own
child process, so peak RSS is its own):
- `all`: LoRA on every layer;
- `ila`: the ILA top-k of a select-layers result (what `--layers-from` tunes);
- `cost-aware`: the best k at or above the depth that keeps `--cost-share` of the top-k's summed
  importance (backward stops higher, and more layers sit in the frozen prefix);
- `…+cache`: the same with the frozen-prefix cache (layers below the lowest tuned one run once per
  batch). Exact, so its adapter must match the uncached arm's: the report shows the largest
  difference, and only the uncached adapter's rewrites are judged (a cached arm run without its
  twin, `--arms all,cost-aware+cache`, is judged itself).
The budget is a seeded draw of `--pairs` for `--epochs`, or with `--recipe-budget CRITERION` that
criterion's starter recipe: every training pair for its config's max_steps.
Correction success is the squad benchmark's dev-set measure: each hand-labelled misaligned dev
answer of the criterion goes to the arm's aligner, and counts as fixed when it is rewritten and the
labelling rule's detectors pass it (serve.dev_judge.made_right); hand-labelled good answers count as
kept when returned byte-for-byte. Prints one JSON object.

    python benchmarks/time_to_aligner.py --criterion harmless --criterion no-pii --pairs-for harmless=384
    python benchmarks/time_to_aligner.py --criterion polite --recipe-budget polite --arms all,cost-aware+cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = {  # name -> (layer choice, frozen-prefix cache)
    "all": ("all", False),
    "ila": ("ila", False),
    "ila+cache": ("ila", True),
    "cost-aware": ("cost-aware", False),
    "cost-aware+cache": ("cost-aware", True),
}


def config_of(criterion: str) -> str:
    return f"configs/aligners/{criterion}.yaml"


def recipe_hash(criterion: str) -> str:
    """Part of every resume key: an arm trained before its recipe changed is trained again."""
    return hashlib.sha256((ROOT / config_of(criterion)).read_bytes()).hexdigest()[:16]


def budget_of(args, criterion: str) -> dict:
    """What each arm of a criterion trains for: a seeded draw of pairs for a few epochs, or with
    --recipe-budget the starter recipe's own (every pair, its max_steps and eval_every)."""
    if criterion not in args.recipe_budget:
        return {"pairs": args.pairs_by_criterion.get(criterion, args.pairs), "epochs": args.epochs,
                "eval_every": args.eval_every}
    from aligners.config import load_config
    from aligners.train_config import AlignerTrainConfig

    cfg = load_config(ROOT / config_of(criterion), AlignerTrainConfig)
    if cfg.max_steps is None:
        raise SystemExit(f"--recipe-budget {criterion}: {config_of(criterion)} sets no max_steps")
    return {"pairs": "all", "max_steps": cfg.max_steps, "eval_every": cfg.eval_every}


def arm_layers(importance: Path, data: str, cost_share: float) -> dict[str, list[int] | str]:
    from aligners.importance import layers_from_runs

    result = json.loads(importance.read_text())
    return {"all": "all", "ila": layers_from_runs(result, data, "gates"),
            "cost-aware": layers_from_runs(result, data, "gates", cost_share)}


def child(args) -> dict:
    """Train one arm (in this process) and report its time, steps and peak memory."""
    from aligners.config import load_config
    from aligners.dataset import resolve_data
    from aligners.train import train_aligner
    from aligners.train_config import AlignerTrainConfig

    budget = json.loads(args.budget)
    splits = resolve_data(args.data)
    train = splits["train"] if budget["pairs"] == "all" else random.Random(0).sample(
        splits["train"], min(budget["pairs"], len(splits["train"])))
    steps = {"epochs": budget["epochs"], "max_steps": None} if "epochs" in budget else {"max_steps": budget["max_steps"]}
    cfg = AlignerTrainConfig.model_validate(load_config(args.config, AlignerTrainConfig).model_dump() | steps | {
        "layers": args.layers if args.layers == "all" else [int(x) for x in args.layers.split(",")],
        "prefix_cache": args.cache, "eval_every": budget["eval_every"], "checkpoint_every": 10**6})
    t0 = time.perf_counter()
    manifest = train_aligner(cfg, train, splits["validation"], args.out, progress=False)
    m = manifest["metrics"]
    return {"layers": manifest["layers"], "wall_s": round(time.perf_counter() - t0, 1),
            "train_s": round(m["wall_s"], 1), "steps": m["steps"], "stopped_early": m["stopped_early"],
            "best_eval_loss": m["best_eval_loss"], "mean_step_s": m["mean_step_s"], "eval_s": round(m["eval_s"], 1),
            "examples": manifest["data"]["examples"], "prefix_cache": m["prefix_cache"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_child(data: str, criterion: str, budget: dict, layers, cache: bool, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--data", data, "--config", config_of(criterion),
           "--layers", layers if layers == "all" else ",".join(map(str, layers)), "--out", str(out),
           "--budget", json.dumps(budget)]
    if cache:
        cmd.append("--cache")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"arm {out.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def adapter_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two adapters' tensors."""
    from safetensors.torch import load_file

    ta, tb = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (a, b))
    if ta.keys() != tb.keys():
        return float("inf")
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def judged_as(name: str, arms: dict) -> str:
    """The arm whose rewrites stand for this one: a cached arm's adapter is the uncached one's
    (checked), so it is judged only where its uncached twin was not trained."""
    twin = name.removesuffix("+cache")
    return twin if twin in arms else name


def correction_quality(criterion: str, aligners: dict[str, Path], dev: str, n: int, max_tokens: int) -> dict:
    """Dev-set correction success and keep rate per aligner, one shared base."""
    from aligners.artifact import AlignerArtifact
    from aligners.backends import SamplingParams
    from aligners.backends.transformers_local import TransformersBackend
    from aligners.config import TransformersBackendConfig
    from aligners.formatting import aligner_request
    from aligners.schema import AnswerRecord, read_jsonl
    from serve.dev_judge import made_right, rate_with_ci

    hand = [r for r in read_jsonl(dev, AnswerRecord) if r.label_by == "hand" and r.criterion == criterion]
    rng = random.Random(f"time-to-aligner:{criterion}")
    bad = rng.sample([r for r in hand if r.label == "misaligned"], min(n, sum(r.label == "misaligned" for r in hand)))
    good = rng.sample([r for r in hand if r.label == "aligned"], min(n // 2, sum(r.label == "aligned" for r in hand)))
    backend = TransformersBackend(TransformersBackendConfig(max_batch_size=8))
    params = SamplingParams(max_tokens=max_tokens)
    out = {}
    for name, path in aligners.items():
        backend.load_adapter(name, str(AlignerArtifact.load(path).adapter_dir()))
        t0 = time.perf_counter()
        fixes = backend.generate([aligner_request(criterion, r.prompt, r.answer, name, params) for r in bad])
        kept = backend.generate([aligner_request(criterion, r.prompt, r.answer, name, params) for r in good])
        right = sum(made_right(criterion, r.answer, o.text) for o, r in zip(fixes, bad, strict=True))
        out[name] = {"made_right": rate_with_ci(right, len(bad)),
                     "good_kept_byte_for_byte": rate_with_ci(sum(o.text == r.answer for o, r in zip(kept, good, strict=True)),
                                                      len(good)),
                     "seconds": round(time.perf_counter() - t0, 1)}
    return out


def bench_criterion(args, criterion: str) -> dict:
    data = args.data_root.format(criterion=criterion)
    layers = arm_layers(ROOT / args.importance, data, args.cost_share)
    out = Path(args.out) / criterion
    budget, recipe = budget_of(args, criterion), recipe_hash(criterion)
    arms = {}
    for name in args.arms:
        choice, cache = ARMS[name]
        folder = out / name
        trained_for = {"budget": budget, "layers": layers[choice], "recipe": recipe}
        done = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else {}
        if done.get("trained_for") == trained_for:  # resumable: a finished arm is kept
            arms[name] = done
            continue
        if folder.exists():
            shutil.rmtree(folder)
        print(f"[{criterion}] training {name} on layers {layers[choice]}", file=sys.stderr, flush=True)
        arms[name] = run_child(data, criterion, budget, layers[choice], cache, folder) | {"trained_for": trained_for}
        (folder / "result.json").write_text(json.dumps(arms[name], indent=2))
    for name, run in arms.items():
        if (twin := judged_as(name, arms)) != name:
            run["adapter_max_abs_diff_vs_uncached"] = adapter_difference(out / name, out / twin)
    judged = [name for name in arms if judged_as(name, arms) == name]
    saved, key = out / "quality.json", {"dev": args.dev, "n": args.n, "max_tokens": args.max_tokens,
                                        "measure": "changed and fixed", "budget": budget, "recipe": recipe,
                                        "layers": {name: layers[ARMS[name][0]] for name in judged}}
    quality = json.loads(saved.read_text()) if saved.is_file() else {}
    if quality.get("for") != key:
        quality = {"for": key} | correction_quality(criterion, {n: out / n for n in judged}, args.dev, args.n,
                                                    args.max_tokens)
        saved.write_text(json.dumps(quality, indent=2))
    for name, run in arms.items():
        run["quality"] = quality[judged_as(name, arms)]
    full = arms["all"]
    for run in arms.values():
        run["wall_speedup_vs_all"] = round(full["train_s"] / run["train_s"], 3)
        run["success_points_vs_all"] = round(
            100 * (run["quality"]["made_right"]["rate"] - full["quality"]["made_right"]["rate"]), 1)
    return {"data": data, **budget, "cost_share": args.cost_share, "arms": arms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", action="append", default=[])
    ap.add_argument("--data-root", default="runs/aligner-data/{criterion}", help="aligner data per criterion")
    ap.add_argument("--importance", default="artifacts/layers/importance.json")
    ap.add_argument("--cost-share", type=float, default=0.9)
    ap.add_argument("--pairs", type=int, default=96, help="training pairs drawn from the data (seeded)")
    ap.add_argument("--pairs-for", action="append", default=[], metavar="CRITERION=N",
                    help="another number of pairs for one criterion (harmless needs more to learn refusing at all)")
    ap.add_argument("--epochs", type=float, default=3, help="the budget; early stopping usually ends sooner")
    ap.add_argument("--recipe-budget", action="append", default=[], metavar="CRITERION",
                    help="train this criterion's arms as its starter recipe does: every pair, the config's max_steps")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, 'all' among them (of {', '.join(ARMS)})")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--dev", default="evals/dev/answers.jsonl")
    ap.add_argument("--n", type=int, default=24, help="hand-labelled misaligned dev answers judged per arm")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", default="runs/bench/time-to-aligner")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--budget", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--layers", help=argparse.SUPPRESS)
    ap.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    criteria = args.criterion or ["harmless", "no-pii", "polite"]
    args.pairs_by_criterion = {}
    for item in args.pairs_for:
        name, _, n = item.partition("=")
        if name not in criteria or not n.isdigit():
            ap.error(f"--pairs-for {item!r}: expected CRITERION=N with CRITERION one of {criteria}")
        args.pairs_by_criterion[name] = int(n)
    if unknown := set(args.recipe_budget) - set(criteria):
        ap.error(f"--recipe-budget {sorted(unknown)}: expected criteria of this run, {criteria}")
    args.arms = args.arms.split(",")
    if "all" not in args.arms or not set(args.arms) <= set(ARMS):
        ap.error(f"--arms {','.join(args.arms)}: expected names of {list(ARMS)}, 'all' among them (the reference)")
    print(json.dumps({"benchmark": "time_to_aligner", "criteria": {c: bench_criterion(args, c) for c in criteria}},
                     indent=2))


if __name__ == "__main__":
    main()
