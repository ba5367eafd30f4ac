"""Routing quality benchmark: the whole pipeline (import -> extract -> scan -> train -> evaluate) on one dataset.

    .venv/bin/python bench/quality.py --dataset routerbench|mmlu-pro [--layers 4,8,12,16,20]
        [--max-tokens 512] [--sample N] [--work build/bench/quality/<dataset>] [--out bench/results/quality-<dataset>.json]

Every step is the `ray-router` command a user would run, as a subprocess; its output goes to
<work>/<step>.log and its wall time into the result. Extraction resumes into <work>/features, so a
rerun (or an interrupted run) only computes the missing queries. `--sample N` uses a deterministic
sample of N queries: the whole test split, then the training queries with the smallest sha256(query_id);
every router in the report is trained and scored on the same rows.

The result JSON holds, for the prefill router and each semantic baseline: gap closed and cost savings
at the best-accuracy point and at the point matching the best single target, mean AUC, AIQ; and the
layer / pooling the scan selected per target. See bench/README.md for the last figures.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMPORTS = {
    "routerbench": ["routerbench", str(SHARED / "routerbench")],
    "mmlu-pro": ["mmlu-pro", str(SHARED / "mmlu_pro"), "--prices", str(SHARED / "mmlu_pro" / "prices.csv")],
}
PAPER = {"gap_closed": 0.4558, "cost_savings": 0.7431, "mean_auc_prefill": 0.856, "mean_auc_semantic": 0.804}


def main() -> None:
    args = _parse_args()
    work = Path(args.work or f"build/bench/quality/{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("ray-router"))
    steps: dict[str, float] = {}

    def run(step: str, *command: str) -> None:
        started = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {step}: ray-router {' '.join(command)}", flush=True)
        with open(work / f"{step}.log", "a") as log:
            done = subprocess.run([cli, *command], stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"{step} failed (exit {done.returncode}); see {work / f'{step}.log'}")
        steps[step] = round(time.time() - started, 1)
        print(f"    {steps[step]:.0f} s", flush=True)

    full = work / "all.parquet"
    if not full.exists():
        run("import", "data", "import", *IMPORTS[args.dataset], "--out", str(full))
    data = full if args.sample is None else _sample(full, args.sample, work / f"sample-{args.sample}.parquet")
    features, scan, bundle, report = (str(work / n) for n in ("features", "scan", "router", "report"))
    run("extract", "extract", "--data", str(data), "--encoder", args.encoder, "--layers", args.layers,
        "--pooling", "last,mean", "--max-tokens", str(args.max_tokens), "--out", features)
    run("scan", "scan-layers", "--data", str(data), "--features", features, "--out", scan)
    run("train", "train", "--data", str(data), "--features", features, "--scan", scan, "--out", bundle)
    run("evaluate", "evaluate", "--bundle", bundle, "--data", str(data), "--features", features, "--out", report)

    result = {
        "dataset": args.dataset, "data": str(data), "encoder": args.encoder, "layers": args.layers,
        "max_tokens": args.max_tokens, "sample": args.sample, "step_seconds": steps,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "paper": PAPER,
        **figures(Path(report) / "metrics.json", Path(scan) / "selection.json"),
    }
    out = Path(args.out or f"bench/results/quality-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_figures(result))
    print(f"wrote {out}")


def figures(metrics_file: Path, selection_file: Path) -> dict:
    """The benchmark's figures, read from an evaluation's metrics.json and a scan's selection.json."""
    metrics = json.loads(metrics_file.read_text())
    selection = json.loads(selection_file.read_text())
    routers = {}
    for router in metrics["routers"]:
        points = {}
        for point in ("best_accuracy", "match_best_single"):
            test = router["operating_points"][point]["test"]
            points[point] = None if test is None else {
                k: test[k] for k in ("accuracy", "gap_closed", "cost_savings", "mean_cost")}
        routers[router["name"]] = {"mean_auc": router["probability"]["mean_auc"], "aiq": router["aiq"], **points}
    return {
        "n_test": metrics["data"]["n_test"],
        "reference": {k: metrics["reference"][k] for k in ("best_single", "oracle_accuracy", "most_expensive")},
        "routers": routers,
        "selected": {t: f"L{s['layer']} {s['pooling']}" + (" (fallback)" if s["fallback"] else "")
                     for t, s in selection["targets"].items()},
    }


def format_figures(result: dict) -> str:
    """The figures as a Markdown table and a line of selected layers."""
    lines = ["| router | mean AUC | AIQ | best acc. | gap closed | savings | savings at best-single acc. |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["routers"].items():
        best, match = r["best_accuracy"], r["match_best_single"]
        lines.append(
            f"| {name} | {r['mean_auc']:.3f} | {r['aiq']:.4f} | {best['accuracy']:.1%} | {best['gap_closed']:.1%} | "
            f"{best['cost_savings']:.1%} | {'not reached' if match is None else format(match['cost_savings'], '.1%')} |")
    counts: dict[str, int] = {}
    for choice in result["selected"].values():
        counts[choice] = counts.get(choice, 0) + 1
    lines.append("selected: " + ", ".join(f"{c} x{n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def _sample(full: Path, n: int, out: Path) -> Path:
    """A deterministic sample of n queries, written once: the whole test split (so that the test rows are
    those of a full run), then the training queries with the smallest sha256(query_id)."""
    if not out.exists():
        from ray_router.data.routing_dataset import RoutingDataset

        dataset = RoutingDataset.read(full)
        test = list(dataset.select(split="test").query_ids)
        train = sorted(dataset.select(split="train").query_ids, key=lambda q: hashlib.sha256(str(q).encode()).hexdigest())
        if n < len(test):
            sys.exit(f"--sample {n} is smaller than the test split ({len(test)} queries)")
        dataset.select(query_ids=test + train[: n - len(test)]).write(out)
    return out


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(IMPORTS), required=True)
    parser.add_argument("--encoder", default="smollm2-135m")
    parser.add_argument("--layers", default="4,8,12,16,20")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--sample", type=int, default=None, help="Route a deterministic sample of N queries.")
    parser.add_argument("--work", default=None, help="Default: build/bench/quality/<dataset>.")
    parser.add_argument("--out", default=None, help="Default: bench/results/quality-<dataset>.json.")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


if __name__ == "__main__":
    main()
