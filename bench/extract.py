"""Extraction benchmark: matmul roofline, plain transformers loop, PrefillEncoder and the Ray Data job.

Measured on the same machine in one run, on the same real RouterBench prompts:
  (a) matmul throughput (GFLOP/s) of the model's own matmul shape: the roofline;
  (b) a plain single-process transformers loop (AutoModelForCausalLM, output_hidden_states=True),
      and (b') PrefillEncoder in-process at full depth and truncated;
  (c) the Ray Data job (extract_features, 1 worker, private local cluster): wall time and steady state;
  (d) truncated vs full model speed-up against the layer ratio.
On CPU in float32; on a CUDA machine also in bfloat16 on the GPU. See bench/README.md.

    .venv/bin/python bench/extract.py [--prompts 128] [--layers 8,15] [--max-tokens 512] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

for _name, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ray_router.data.importers.routerbench import import_routerbench  # noqa: E402
from ray_router.data.routing_dataset import RoutingDataset  # noqa: E402
from ray_router.features.extraction import extract_features  # noqa: E402
from ray_router.features.prefill_encoder import PrefillEncoder  # noqa: E402
from ray_router.features.schema import EncoderConfig  # noqa: E402
from ray_router.features.sources import resolve_encoder  # noqa: E402
from ray_router.resources import WorkerResources  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENCODER = "smollm2-135m"
POOLINGS = ("last", "mean")
SEED = 0
QUIET_LOAD = 1.0  # wait for the 1-minute load average to fall below this before measuring
QUIET_POLL_S = 20
GOAL_RAY_VS_PLAIN = 0.90  # Ray job per worker >= 90 % of the plain loop's tokens/s
GOAL_TRUNCATION = 0.90  # truncation speed-up >= 90 % of the layer ratio ("close to")
GOAL_ROOFLINE_CPU = 0.60  # >= 60 % of the matmul roofline on CPU


# --- helpers ----------------------------------------------------------------------------------------


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def wait_until_quiet(max_wait_s: float) -> dict:
    """Poll the 1-minute load average until it is below QUIET_LOAD (at most max_wait_s)."""
    first = load_average()
    start = time.monotonic()
    while load_average() >= QUIET_LOAD and time.monotonic() - start < max_wait_s:
        print(f"waiting for a quiet machine: load average {load_average():.2f} >= {QUIET_LOAD}", flush=True)
        time.sleep(QUIET_POLL_S)
    seen = load_average()
    return {
        "before_wait": first,
        "waited_s": round(time.monotonic() - start, 1),
        "at_start": seen,
        "quiet": seen < QUIET_LOAD,
    }


class PhaseLog:
    """Per benchmark phase: the load average at its start, its wall seconds and, for phases that run in
    this process, the share of its torch threads' cores it got (CPU time / wall / threads; clearly
    below 1 means other processes took CPU during the phase)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict] = {}
        self._current: tuple[str, float, float, bool] | None = None

    def start(self, name: str, in_process: bool = True) -> None:
        self.stop()
        self.phases[name] = {"load_average": load_average()}
        print(f"{name} (load average {self.phases[name]['load_average']:.2f})", flush=True)
        self._current = (name, time.perf_counter(), time.process_time(), in_process)

    def stop(self) -> None:
        if self._current is None:
            return
        name, wall, cpu, in_process = self._current
        wall = time.perf_counter() - wall
        self.phases[name]["seconds"] = round(wall, 1)
        if in_process:
            self.phases[name]["cpu_share"] = round((time.process_time() - cpu) / wall / torch.get_num_threads(), 2)
        self._current = None


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn: Callable[[], object], device: str, runs: int = 10) -> float:
    """Best wall time of `fn` over `runs` (after one warm-up); on a GPU each run repeats fn 20 times."""
    inner = 20 if device == "cuda" else 1
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def sample_prompts(count: int) -> RoutingDataset:
    """A deterministic sample of `count` RouterBench queries (all tasks, both splits)."""
    dataset = import_routerbench(REPO.parent / "shared" / "data" / "routerbench")
    rows = np.random.default_rng(SEED).choice(len(dataset), size=min(count, len(dataset)), replace=False)
    return dataset.select(rows=rows)


def padded_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Tokens computed when `lengths` are batched in this order and padded to each batch's longest."""
    return sum(max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
               for i in range(0, len(lengths), batch_size))


class ParameterCount:
    """Parameters run per token: decoder blocks up to a depth, the final norm, optionally the LM head."""

    def __init__(self, model) -> None:
        base = model.model
        self.total_layers = len(base.layers)
        self.per_block = sum(p.numel() for p in base.layers[0].parameters())
        self.final_norm = sum(p.numel() for p in base.norm.parameters())
        self.lm_head = model.lm_head.weight.numel()
        self.embedding = base.embed_tokens.weight.numel()
        self.hidden = model.config.hidden_size

    def run(self, depth: int, lm_head: bool = False) -> int:
        return self.per_block * depth + self.final_norm + (self.lm_head if lm_head else 0)

    def attention_flops(self, lengths: Sequence[int], depth: int) -> float:
        """Causal attention score and value FLOPs (not in 2 x params x tokens): 2 * L^2 * hidden per layer."""
        return float(sum(2 * length**2 * self.hidden for length in lengths) * depth)


def throughput(tokens: int, seconds: float, params: int) -> dict:
    """tokens/s and achieved GFLOP/s = 2 x parameters run x real tokens / seconds."""
    return {
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "params_run": params,
        "gflops": round(2 * params * tokens / seconds / 1e9, 2),
    }


# --- (a) the roofline -----------------------------------------------------------------------------------


def matmul_roofline(device: str, dtype: torch.dtype, rows: int, config) -> dict:
    """GFLOP/s of the model's matmuls (x @ W^T, as nn.Linear) on `rows` tokens, of their mix in one
    decoder block, and of a big square matmul. The roofline is the MLP's (rows x hidden) @ (hidden x
    intermediate)."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * getattr(config, "head_dim", hidden // config.num_attention_heads)
    # (input width, output width, how many such matmuls per block): q/o, k/v, gate/up, down
    block = [(hidden, intermediate, 2), (intermediate, hidden, 1), (hidden, hidden, 2), (hidden, kv, 2)]
    square = 8192 if device == "cuda" else 2048
    gflops, block_flops, block_seconds = {}, 0.0, 0.0
    for m, k, n, count in [(rows, k, n, c) for k, n, c in block] + [(square, square, square, 0)]:
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        seconds = best_seconds(lambda: torch.nn.functional.linear(x, w), device)
        gflops[f"({m}x{k})@({k}x{n})"] = round(2 * m * k * n / seconds / 1e9, 1)
        block_flops += count * 2 * m * k * n
        block_seconds += count * seconds
    roofline_shape = next(iter(gflops))
    return {
        "roofline_shape": roofline_shape,
        "roofline_gflops": gflops[roofline_shape],
        "block_mix_gflops": round(block_flops / block_seconds / 1e9, 1),
        "gflops": gflops,
    }


# --- (b) the plain transformers loop ------------------------------------------------------------------


def plain_loop(folder: Path, prompts: list[str], max_tokens: int, batch_size: int, device: str,
               dtype: torch.dtype) -> dict:
    """What a user would write: chat template, tokenizer truncation keeping the end, batches sorted by
    length and padded, AutoModelForCausalLM(..., output_hidden_states=True), last/mean pooling."""
    (tokenizer, model), load_s = timed(
        lambda: (AutoTokenizer.from_pretrained(folder),
                 AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()),
        device,
    )
    tokenizer.truncation_side = "left"
    depth = model.config.num_hidden_layers

    def run(texts: list[str]) -> int:
        encoded = tokenizer(
            [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in texts],
            add_special_tokens=False, truncation=True, max_length=max_tokens,
        )["input_ids"]
        encoded.sort(key=len, reverse=True)
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                batch = tokenizer.pad({"input_ids": encoded[start : start + batch_size]}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden = model(**batch, output_hidden_states=True).hidden_states[depth]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                last = batch["attention_mask"].sum(1) - 1
                _ = hidden[torch.arange(len(last), device=device), last].float().cpu()
                _ = ((hidden * mask).sum(1) / mask.sum(1)).float().cpu()
        return sum(len(ids) for ids in encoded)

    run(prompts[:2])  # warm-up
    tokens, seconds = timed(lambda: run(prompts), device)
    counter = ParameterCount(model)
    del model
    return {"load_s": round(load_s, 2), "tokens": tokens, "seconds": seconds, "counter": counter}


# --- (b') PrefillEncoder in-process ---------------------------------------------------------------------


def encoder_run(prompts: list[str], depth: int, max_tokens: int, batch_size: int, device: str,
                dtype: str) -> dict:
    """PrefillEncoder truncated to `depth` blocks, timed on the prompts after a warm-up batch."""
    encoder, load_s = timed(
        lambda: PrefillEncoder(EncoderConfig(encoder=ENCODER, layers=[depth], poolings=POOLINGS, max_tokens=max_tokens,
                                             dtype=dtype), device=device),
        device,
    )
    lengths = [len(ids) for ids in encoder.tokenize(prompts)]
    encoder.encode(prompts[:2])  # warm-up
    _, seconds = timed(lambda: encoder.encode(prompts, batch_size=batch_size), device)
    del encoder
    return {"load_s": round(load_s, 2), "tokens": sum(lengths), "seconds": seconds, "lengths": lengths}


# --- (c) the Ray Data job -------------------------------------------------------------------------------


def ray_runs(data: Path, lengths: list[int], depth: int, max_tokens: int, batch_size: int, gpu: bool,
             work: Path, small: int) -> dict:
    """The Ray Data job on all prompts, then on the first `small`: the difference gives the steady state.

    The full run goes first, so one-time costs of the first job in this driver are in it, not in the
    small run: the steady-state rate is, if anything, underestimated.
    """

    def job(name: str, limit: int | None) -> float:
        _, seconds = timed(
            lambda: extract_features(
                str(data), EncoderConfig(encoder=ENCODER, layers=[depth], poolings=POOLINGS, max_tokens=max_tokens,
                                         dtype="bfloat16" if gpu else "float32"),
                str(work / name), limit=limit, batch_size=batch_size,
                resources=WorkerResources(num_workers=1, num_gpus=1.0 if gpu else 0.0),
            ),
            "cpu",
        )
        return seconds

    full_s = job("full", None)
    small_s = job("small", small)
    tokens, small_tokens = sum(lengths), sum(lengths[:small])
    if full_s <= small_s:
        raise RuntimeError(f"the Ray job on all prompts ({full_s:.1f} s) was not slower than on {small} "
                           f"({small_s:.1f} s): use more --prompts to separate the steady state")
    steady_tps = (tokens - small_tokens) / (full_s - small_s)
    return {
        "tokens": tokens,
        "job_s": round(full_s, 2),
        "small_prompts": small,
        "small_tokens": small_tokens,
        "small_job_s": round(small_s, 2),
        "steady_seconds": tokens / steady_tps,  # the full run's tokens at the steady-state rate
        "fixed_overhead_s": round(full_s - tokens / steady_tps, 2),
    }


# --- one device ---------------------------------------------------------------------------------------


def measure(device: str, args, sample: RoutingDataset, data_file: Path, work: Path, ray_start_s: float,
            log: PhaseLog) -> dict:
    """(a)-(d) on one device: float32 on CPU, bfloat16 on CUDA."""
    dtype_name = "bfloat16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    folder = resolve_encoder(ENCODER).folder
    prompts = sample.prompts
    config = transformers.AutoConfig.from_pretrained(folder)
    total = config.num_hidden_layers
    depths = sorted({d for d in args.layers if d < total}, reverse=True)

    def phase(name: str, in_process: bool = True) -> None:
        log.start(f"[{device}] {name}", in_process)

    def roofline() -> dict:
        return matmul_roofline(device, dtype, args.batch_size * args.max_tokens, config)

    phase("matmul roofline")
    matmul = {"start": roofline()}

    phase(f"plain transformers loop, {total} layers")
    plain = plain_loop(folder, prompts, args.max_tokens, args.batch_size, device, dtype)
    counter: ParameterCount = plain.pop("counter")
    rows = {"plain": {"load_s": plain["load_s"],
                      **throughput(plain["tokens"], plain["seconds"], counter.run(total, lm_head=True))}}
    rows["plain"]["gflops_blocks_only"] = round(2 * counter.run(total) * plain["tokens"] / plain["seconds"] / 1e9, 2)

    for depth in [total, *depths]:
        phase(f"PrefillEncoder in-process, {depth} layers")
        run = encoder_run(prompts, depth, args.max_tokens, args.batch_size, device, dtype_name)
        lengths = run.pop("lengths")  # the same at every depth
        rows[f"encoder_{depth}"] = {"load_s": run["load_s"],
                                    **throughput(run["tokens"], run["seconds"], counter.run(depth))}

    phase(f"Ray Data job, {total} layers, 1 worker", in_process=False)
    small = max(1, min(args.batch_size, len(prompts) // 4))
    ray_result = ray_runs(data_file, lengths, total, args.max_tokens, args.batch_size, device == "cuda",
                          work / device, small)
    wall_s = ray_start_s + ray_result["job_s"]
    rows["ray_wall"] = {"ray_start_s": round(ray_start_s, 2), **throughput(sum(lengths), wall_s, counter.run(total))}
    rows["ray_steady"] = {**{k: v for k, v in ray_result.items() if k != "steady_seconds"},
                          **throughput(sum(lengths), ray_result["steady_seconds"], counter.run(total))}

    phase("matmul roofline again")
    matmul["end"] = roofline()
    log.stop()
    # The better of the two measurements is the roofline (a busy machine only lowers it).
    peak = max(matmul["start"]["roofline_gflops"], matmul["end"]["roofline_gflops"])
    matmul.update(roofline_shape=matmul["start"]["roofline_shape"], roofline_gflops=peak)
    for row in rows.values():
        row["roofline_share"] = round(row["gflops"] / peak, 3)
    tps = {name: row["tokens_per_s"] for name, row in rows.items()}
    truncation = {
        str(depth): {
            "speedup": round(tps[f"encoder_{depth}"] / tps[f"encoder_{total}"], 3),
            "layer_ratio": round(total / depth, 3),
            "share_of_layer_ratio": round(tps[f"encoder_{depth}"] / tps[f"encoder_{total}"] / (total / depth), 3),
        }
        for depth in depths
    }
    padding_sorted = padded_tokens(sorted(lengths, reverse=True), args.batch_size)
    ratios = {
        "ray_steady_over_plain": round(tps["ray_steady"] / tps["plain"], 3),
        "ray_steady_over_encoder": round(tps["ray_steady"] / tps[f"encoder_{total}"], 3),
        "ray_wall_over_plain": round(tps["ray_wall"] / tps["plain"], 3),
        "encoder_over_plain": round(tps[f"encoder_{total}"] / tps["plain"], 3),
        "truncated_over_full": truncation,
        "roofline_share": {name: row["roofline_share"] for name, row in rows.items()},
    }
    goals = {
        "ray_within_10pct_of_plain": ratios["ray_steady_over_plain"] >= GOAL_RAY_VS_PLAIN,
        "truncation_close_to_layer_ratio": all(t["share_of_layer_ratio"] >= GOAL_TRUNCATION
                                               for t in truncation.values()),
    }
    if device == "cpu":
        goals["ray_steady_60pct_of_roofline"] = rows["ray_steady"]["roofline_share"] >= GOAL_ROOFLINE_CPU
        goals["encoder_60pct_of_roofline"] = rows[f"encoder_{total}"]["roofline_share"] >= GOAL_ROOFLINE_CPU
    return {
        "dtype": dtype_name,
        "matmul": matmul,
        "runs": rows,
        "ratios": ratios,
        "goals": goals,
        "model": {
            "total_layers": total,
            "params_per_block": counter.per_block,
            "lm_head_params": counter.lm_head,
            "embedding_params": counter.embedding,
        },
        "tokens": {
            "real": sum(lengths),
            "mean_per_prompt": round(float(np.mean(lengths)), 1),
            "at_max_tokens": int(sum(length >= args.max_tokens for length in lengths)),
            "padding_share_sorted": round(1 - sum(lengths) / padding_sorted, 4),
            "padding_share_unsorted": round(1 - sum(lengths) / padded_tokens(lengths, args.batch_size), 4),
            "attention_flops_share": round(counter.attention_flops(lengths, total)
                                           / (2 * counter.run(total) * sum(lengths)), 4),
        },
    }


# --- report -------------------------------------------------------------------------------------------


def print_report(results: dict) -> None:
    for device, r in results["devices"].items():
        total = r["model"]["total_layers"]
        print(f"\n== {device} ({r['dtype']}), {r['tokens']['real']} real tokens "
              f"({r['tokens']['mean_per_prompt']}/prompt) ==")
        for when in ("start", "end"):
            m = r["matmul"][when]
            print(f"matmul GFLOP/s at {when}: " + ", ".join(f"{k} {v}" for k, v in m["gflops"].items())
                  + f"; decoder-block mix {m['block_mix_gflops']}")
        print(f"roofline = {r['matmul']['roofline_shape']}: {r['matmul']['roofline_gflops']} GFLOP/s\n")
        labels = {"plain": f"plain transformers loop ({total} layers + LM head)"}
        labels.update({k: f"PrefillEncoder in-process ({k.split('_')[1]} layers)"
                       for k in r["runs"] if k.startswith("encoder_")})
        labels["ray_wall"] = f"Ray Data job, wall incl. Ray start + load ({total})"
        labels["ray_steady"] = f"Ray Data job, steady state ({total} layers)"
        print(f"{'run':<55}{'seconds':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'roofline':>10}")
        for key, label in labels.items():
            row = r["runs"][key]
            print(f"{label:<55}{row['seconds']:>9.1f}{row['tokens_per_s']:>10.1f}{row['gflops']:>9.1f}"
                  f"{row['roofline_share']:>10.0%}")
        ratios = r["ratios"]
        print(f"\nRay steady / plain loop:       {ratios['ray_steady_over_plain']:.3f}  "
              f"(goal >= {GOAL_RAY_VS_PLAIN}: {'met' if r['goals']['ray_within_10pct_of_plain'] else 'MISSED'})")
        print(f"Ray steady / PrefillEncoder:   {ratios['ray_steady_over_encoder']:.3f}")
        print(f"Ray wall / plain loop:         {ratios['ray_wall_over_plain']:.3f}  "
              f"(fixed overhead {r['runs']['ray_steady']['fixed_overhead_s']} s + Ray start "
              f"{r['runs']['ray_wall']['ray_start_s']} s)")
        print(f"PrefillEncoder / plain loop:   {ratios['encoder_over_plain']:.3f}")
        for depth, t in ratios["truncated_over_full"].items():
            print(f"truncated {depth}/{total} layers:       speed-up {t['speedup']:.2f}x vs layer ratio "
                  f"{t['layer_ratio']:.2f}x ({t['share_of_layer_ratio']:.0%})")
        print(f"padding share (sorted batches) {r['tokens']['padding_share_sorted']:.1%}, unsorted would be "
              f"{r['tokens']['padding_share_unsorted']:.1%}; attention FLOPs "
              f"+{r['tokens']['attention_flops_share']:.1%} beyond 2 x params x tokens")
        print("goals: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in r["goals"].items()))
    loads = results["load_average"]
    print(f"\nload average: start {loads['at_start']}, end {loads['at_end']} (quiet before start: {loads['quiet']})")
    for name, phase in loads["per_phase"].items():
        share = f", CPU share {phase['cpu_share']:.2f}" if "cpu_share" in phase else ""
        print(f"  {name}: {phase['seconds']} s, load average at start {phase['load_average']}{share}")


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "ray": ray.__version__},
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128, help="RouterBench prompts in the sample")
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[8, 15],
                        help="truncated depths compared with the full model, e.g. 8,15")
    parser.add_argument("--max-tokens", type=int, default=512, help="token budget per prompt (keeps the end)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-wait", type=float, default=15 * 60,
                        help=f"seconds to wait for a load average below {QUIET_LOAD} before measuring")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "extract.json")
    args = parser.parse_args(argv)
    if args.prompts < 4 or args.max_tokens < 32 or args.batch_size < 1 or min(args.layers) < 1:
        parser.error("need --prompts >= 4, --max-tokens >= 32, --batch-size >= 1, --layers >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()
    sample = sample_prompts(args.prompts)
    resolve_encoder(ENCODER)  # converts the GGUF once, before anything is timed
    loads = wait_until_quiet(args.max_wait)
    log = PhaseLog()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        data_file = work / "sample.parquet"
        sample.write(data_file)
        _, ray_start_s = timed(lambda: ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                                                object_store_memory=256 * 1024**2, log_to_driver=False), "cpu")
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            # Ray is started once: its start time is counted in the first device's wall time only.
            measured = {device: measure(device, args, sample, data_file, work, ray_start_s if i == 0 else 0.0, log)
                        for i, device in enumerate(devices)}
        finally:
            ray.shutdown()
    loads["at_end"] = load_average()
    loads["per_phase"] = log.phases
    results = {
        "command": " ".join([".venv/bin/python", "bench/extract.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"prompts": len(sample), "seed": SEED, "max_tokens": args.max_tokens,
                     "batch_size": args.batch_size, "truncated_layers": args.layers, "poolings": list(POOLINGS),
                     "encoder": ENCODER, "ray_workers": 1},
        "load_average": loads,
        "benchmark_s": round(time.perf_counter() - started, 1),
        "devices": measured,
    }
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out} ({results['benchmark_s']} s)")


if __name__ == "__main__":
    main()
