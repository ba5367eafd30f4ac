"""Routing quality benchmark: the whole pipeline on one dataset, the router chosen on validation, and an ablation.

    .venv/bin/python bench/quality.py --dataset routerbench|mmlu-pro [--encoders smollm2-135m,gemma3-270m]
        [--max-tokens 512] [--sample N] [--reuse] [--work build/bench/quality/<dataset>]
        [--out bench/results/quality-<dataset>.json]

Every step is the `ray-router` command a user would run, as a subprocess; its output goes to <work>/<step>.log
and its wall time into the result. Per encoder: extraction of every layer (full depth; resumable into
<work>/features-<encoder>) and a layer scan. Then `train` with the search config SEARCH: every candidate (head,
blocks, PCA k, width, dropout, weight decay, the pairwise ranking loss) is trained on the fit rows and the one
with the lowest holdout log-loss is kept; calibration is kept when it lowers the holdout log-loss (cross-fitted);
the kept head is fitted again on POLICY_FOLDS folds of the fit rows, whose out-of-fold predictions join the
holdout as the rows the policy is chosen on (evaluate does the same for the baselines). The encoders are a lever
too: the search on every encoder and on the first alone, and the one with the lower holdout log-loss is
the router (the other is its encoder row). Each ABLATION row is the same training on the chosen encoders with one
lever switched off; where the full router's search kept no candidate or calibration that the row removes, the row
is the full router's bundle itself (training it again gives the same head and out-of-fold rows). One `evaluate`
scores them all on the same test split, with the anchored policy (anchor and margin fitted on each router's
validation rows, lambda swept), beside the semantic baselines; the full router evaluated again with the tolerance
and the utility policy are the policy's ablation rows. The test split is read only by these evaluations; every row
also has its AIQ on validation, what a choice between rows can be made on. `--sample N` uses a deterministic sample
of N queries (the whole test split, then the training queries with the smallest sha256(query_id)).

The result JSON holds per router: mean AUC, AIQ (test and validation), accuracy at the best-accuracy point (Δ vs
the best single target with its bootstrap CI, gap closed), cost savings at the point matching the best single
target, ECE, and the paired differences of mean AUC and AIQ with the best semantic baseline. See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMPORTS = {
    "routerbench": ["routerbench", str(SHARED / "routerbench")],
    "mmlu-pro": ["mmlu-pro", str(SHARED / "mmlu_pro"), "--prices", str(SHARED / "mmlu_pro" / "prices.csv")],
}
DEPTH = {"smollm2-135m": 30, "gemma3-270m": 18, "minilm-l6": 6}  # every hidden state: embeddings, each block
PAPER = {"gap_closed": 0.4558, "cost_savings": 0.7431, "mean_auc_prefill": 0.856, "mean_auc_semantic": 0.804}
# The validation search of the full router (overrides of RouterTrainConfig, see README "Training config").
SEARCH = [
    {},
    {"unique_inputs": True},
    {"blocks": "all-layers"},
    {"blocks": "all-layers", "all_layers_pooling": "last"},
    {"pca_k": 50},
    {"pca_k": 200},
    {"trainer": {"hidden": [512, 256]}},
    {"trainer": {"dropout": [0.5, 0.4]}},
    {"trainer": {"weight_decay": 0.001}},
    {"trainer": {"pairwise_weight": 1.0}},
    {"head": "logistic"},
    {"head": "knn"},
    {"head": "stack"},
]
# One lever off per row: the default blocks only, the SharedTrunkNet head only, no hyperparameter search, no
# calibration.
ABLATION = {
    "no multi-layer blocks": {"candidates": [c for c in SEARCH if "blocks" not in c]},
    "SharedTrunkNet only": {"candidates": [c for c in SEARCH if "head" not in c]},
    "no hyperparameter search": {"candidates": [c for c in SEARCH if not ({"pca_k", "trainer"} & set(c))]},
    "no calibration": {"calibrate": False},
}
POLICY_FOLDS = 5  # bench/validation_out_of_fold.py: the policy's points hold better on these rows than on the holdout
POLICY_ABLATION = {"tolerance policy": "tolerance", "utility policy": "utility"}  # row name -> policy swept


def main() -> None:
    args = _parse_args()
    work = Path(args.work or f"build/bench/quality/{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("ray-router"))
    steps: dict[str, float] = {}

    reused: list[str] = []

    def run(step: str, *command: str, inputs: tuple[str, ...] = ()) -> None:
        """Run one `ray-router` command; with --reuse, a step with `inputs` is skipped when its last run had the
        same command and the same input files (its stamp <work>/<step>.done)."""
        stamp, fingerprint = work / f"{step}.done", step_fingerprint(command, inputs)
        if args.reuse and inputs and stamp.exists() and stamp.read_text() == fingerprint:
            reused.append(step)
            print(f"[{time.strftime('%H:%M:%S')}] {step}: reused (same command and inputs as {stamp})", flush=True)
            return
        stamp.unlink(missing_ok=True)
        started = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {step}: ray-router {' '.join(command)}", flush=True)
        with open(work / f"{step}.log", "a") as log:
            done = subprocess.run([cli, *command], stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"{step} failed (exit {done.returncode}); see {work / f'{step}.log'}")
        steps[step] = round(time.time() - started, 1)
        if inputs:
            stamp.write_text(fingerprint)
        print(f"    {steps[step]:.0f} s", flush=True)

    full = work / "all.parquet"
    if not full.exists():
        run("import", "data", "import", *IMPORTS[args.dataset], "--out", str(full))
    data = str(full if args.sample is None else _sample(full, args.sample, work / f"sample-{args.sample}.parquet"))
    encoders = args.encoders.split(",")
    features, scans = [], []
    for encoder in encoders:
        folder, scan = str(work / f"features-{encoder}"), str(work / f"scan-{encoder}")
        run(f"extract-{encoder}", "extract", "--data", data, "--encoder", encoder, "--layers", f"0-{DEPTH[encoder]}",
            "--pooling", "last,mean", "--max-tokens", str(args.max_tokens), "--out", folder)
        run(f"scan-{encoder}", "scan-layers", "--data", data, "--features", folder, "--out", scan,
            inputs=(data, folder))
        features.append(folder)
        scans.append(scan)

    def train(name: str, override: dict, use: int) -> str:
        config = work / f"train-{name.replace(' ', '-')}.yaml"
        config.write_text(yaml.safe_dump({"candidates": SEARCH, "policy_folds": POLICY_FOLDS, **override}))
        bundle = str(work / f"router-{name.replace(' ', '-')}")
        options = [x for f, s in zip(features[:use], scans[:use]) for x in ("--features", f, "--scan", s)]
        run(f"train-{name.replace(' ', '-')}", "train", "--data", data, *options, "--config", str(config),
            "--out", bundle, inputs=(data, str(config), *features[:use], *scans[:use]))
        return bundle

    main_bundle, ablations, use = train("full", {}, len(encoders)), {}, len(encoders)
    if len(encoders) > 1:  # the encoder lever, chosen on the holdout like any other
        one = train("one encoder", {}, 1)
        if _holdout_log_loss(one) < _holdout_log_loss(main_bundle):
            main_bundle, ablations["all encoders"], use = one, main_bundle, 1
        else:
            ablations["one encoder"] = one
    full_manifest = _manifest(main_bundle)
    same_as_full = [name for name, override in ABLATION.items() if repeats_full(override, full_manifest)]
    for name in same_as_full:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: the full router's bundle (its search kept no candidate or "
              "calibration that this row removes)", flush=True)
    ablations |= {name: main_bundle if name in same_as_full else
                  train(name if use == len(encoders) else f"{name} one encoder", override, use)
                  for name, override in ABLATION.items()}
    report = str(work / "report")
    feature_options = [x for f in features for x in ("--features", f)]
    run("evaluate", "evaluate", "--bundle", main_bundle, "--data", data, *feature_options, "--out", report,
        "--policy", "anchored", *[x for name, path in ablations.items() for x in ("--compare", f"{name}={path}")])
    policy_reports = {}
    for name, kind in POLICY_ABLATION.items():
        folder = work / f"report-{kind}"
        run(f"evaluate-{kind}", "evaluate", "--bundle", main_bundle, "--data", data, *feature_options,
            "--out", str(folder), "--policy", kind, "--baselines", "none")
        policy_reports[name] = folder / "metrics.json"

    result = {
        "dataset": args.dataset, "data": data, "encoders": encoders, "max_tokens": args.max_tokens,
        "sample": args.sample, "step_seconds": steps, "reused_steps": reused, "paper": PAPER,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures(Path(report) / "metrics.json", policy_reports),
        "encoders_chosen": encoders[:use], "ablations_same_as_full": same_as_full,
        "chosen": _manifest(main_bundle)["validation"],
    }
    out = Path(args.out or f"bench/results/quality-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_figures(result))
    print(f"wrote {out}")


def step_fingerprint(command: tuple[str, ...], inputs: tuple[str, ...]) -> str:
    """sha256 of the command, of each input file's content and of each input folder's file paths, sizes and
    modification times (but its manifest.json: a resumed extraction that computes nothing rewrites it)."""
    digest = hashlib.sha256(json.dumps(command).encode())
    for root in map(Path, inputs):
        if root.is_file():
            digest.update(hashlib.sha256(root.read_bytes()).digest())
            continue
        for file in sorted(path for path in root.rglob("*") if path.is_file() and path.name != "manifest.json"):
            digest.update(f"{file}:{file.stat().st_size}:{file.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()


def repeats_full(override: dict, manifest: dict) -> bool:
    """Whether training with the ablation `override` would give the head and out-of-fold rows of the full router
    (its router.json `manifest`) again: its search still holds the candidate the full router kept (removing
    candidates that lost leaves the same winner, training being deterministic) and, turning calibration off, the
    full router kept none."""
    kept = next((c["override"] for c in manifest["validation"]["candidates"] if c["chosen"]), {})
    keeps_candidate = kept in override.get("candidates", SEARCH)
    keeps_calibration = override.get("calibrate", True) is not False or manifest["temperatures"] is None
    return set(override) <= {"candidates", "calibrate"} and keeps_candidate and keeps_calibration


def _manifest(bundle: str) -> dict:
    return json.loads((Path(bundle) / "router.json").read_text())


def _holdout_log_loss(bundle: str) -> float:
    return _manifest(bundle)["validation"]["holdout_log_loss"]


def figures(metrics_file: Path, policy_reports: dict[str, Path]) -> dict:
    """Per router the benchmark's figures, read from the evaluations' metrics.json (the main one, and one per
    policy row whose first router is the full router swept with that policy)."""
    metrics = json.loads(metrics_file.read_text())
    rows = {router["name"]: _router_figures(router) for router in metrics["routers"]}
    for name, path in policy_reports.items():
        rows[name] = _router_figures(json.loads(path.read_text())["routers"][0])
    semantic = [r for r in metrics["routers"] if r["name"].startswith("semantic")]
    best_semantic = max(semantic, key=lambda r: r["aiq"])["name"] if semantic else None
    versus = next((c for c in metrics["comparisons"] if c["other"] == best_semantic), None)
    return {
        "n_test": metrics["data"]["n_test"],
        "reference": {k: metrics["reference"][k] for k in ("best_single", "oracle_accuracy", "most_expensive")},
        "routers": rows,
        "best_semantic": best_semantic,
        "versus_best_semantic": versus and {"mean_auc": versus["mean_auc"], "aiq": versus["aiq"]},
    }


def _router_figures(router: dict) -> dict:
    best, match = (router["operating_points"][p]["test"] for p in ("best_accuracy", "match_best_single"))
    return {
        "mean_auc": router["probability"]["mean_auc"], "aiq": router["aiq"], "val_aiq": router["val_aiq"],
        "ece": router["probability"]["ece"],
        "best_accuracy": best and {k: best[k] for k in ("accuracy", "gap_closed", "cost_savings", "mean_cost",
                                                      "accuracy_vs_best_single")},
        "savings_at_best_single": None if match is None else match["cost_savings"],
        "savings_point_vs_best_single": None if match is None else match["accuracy_vs_best_single"],
    }


def format_figures(result: dict) -> str:
    """The figures as a Markdown table, and the paired differences with the best semantic baseline."""
    lines = ["| router | mean AUC | AIQ | val. AIQ | best acc. | Δ vs best single [95% CI] | gap closed | savings at "
             "best-single acc. (val), at Δ on test | ECE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["routers"].items():
        best = r["best_accuracy"]
        diff = best["accuracy_vs_best_single"]
        savings = "not reached" if r["savings_at_best_single"] is None else (
            f"{r['savings_at_best_single']:.1%} at {_signed_ci(r['savings_point_vs_best_single'])}")
        lines.append(
            f"| {name} | {r['mean_auc']:.3f} | {r['aiq']:.4f} | {r['val_aiq']:.4f} | {best['accuracy']:.1%} | "
            f"{_signed_ci(diff)} | "
            f"{best['gap_closed']:.1%} | {savings} | {r['ece']:.3f} |")
    versus = result["versus_best_semantic"]
    if versus:
        lines.append("")
        for stat, digits in (("mean_auc", 3), ("aiq", 4)):
            d = versus[stat]
            lines.append(f"{stat} of the prefill router minus {result['best_semantic']}: {d['difference']:+.{digits}f} "
                         f"[{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]")
    return "\n".join(lines)


def _signed_ci(difference: dict) -> str:
    """An accuracy difference and its CI in points: +0.8 [-0.3, +1.8]."""
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * difference[k] for k in ("difference", "ci_low", "ci_high")))


def _sample(full: Path, n: int, out: Path) -> Path:
    """A deterministic sample of n queries, written once: the whole test split (so that the test rows are
    those of a full run), then the training queries with the smallest sha256(query_id)."""
    if not out.exists():
        from ray_router.data.routing_dataset import RoutingDataset

        dataset = RoutingDataset.read(full)
        test = list(dataset.select(split="test").query_ids)
        train = sorted(dataset.select(split="train").query_ids,
                       key=lambda q: hashlib.sha256(str(q).encode()).hexdigest())
        if n < len(test):
            sys.exit(f"--sample {n} is smaller than the test split ({len(test)} queries)")
        dataset.select(query_ids=test + train[: n - len(test)]).write(out)
    return out


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(IMPORTS), required=True)
    parser.add_argument("--encoders", default="smollm2-135m,gemma3-270m", help="Comma-separated, of "
                        f"{', '.join(DEPTH)}; the first alone is the one-encoder ablation.")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--sample", type=int, default=None, help="Route a deterministic sample of N queries.")
    parser.add_argument("--reuse", action="store_true", help="Skip a scan or train whose last run had the same "
                        "command and input files (router bundles of an earlier run are kept).")
    parser.add_argument("--work", default=None, help="Default: build/bench/quality/<dataset>.")
    parser.add_argument("--out", default=None, help="Default: bench/results/quality-<dataset>.json.")
    args = parser.parse_args()
    unknown = sorted(set(args.encoders.split(",")) - set(DEPTH))
    if unknown:
        parser.error(f"unknown encoders {unknown}: choose from {', '.join(DEPTH)}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


if __name__ == "__main__":
    main()
