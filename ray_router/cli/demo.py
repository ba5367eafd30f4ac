"""`ray-router demo` (what `make demo` runs): from the RouterBench data to a served router, in one command.

Each stage is the `ray-router` command a user would run, as a subprocess whose output goes to
build/logs/<stage>.log (`--verbose` shows it instead); the terminal gets one line per stage, and a progress
bar with its ETA during the extraction. A stage whose output is already complete is skipped, so a rerun
reuses the features and the models (`make clean` starts over). The last stage serves the router on Ray
Serve (serve_configs/local-cpu.yaml), sends it real requests, prints what it decided and answered, and
stops everything it started, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from ray_router.cli.options import ray_address_option
from ray_router.errors import UserError

DEMO_LAYERS = "2,4,6,8"
DEMO_MAX_TOKENS = 256
SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "local-cpu.yaml"
QUESTIONS = [
    "Which gas do plants absorb from the air for photosynthesis? (A) oxygen (B) carbon dioxide (C) nitrogen "
    "(D) helium. Answer with the letter only.",
    "Write a Python function that returns the n-th Fibonacci number.",
]


class _Stages:
    """Runs the demo's stages as `ray-router` subprocesses, one terminal line each, logs in `logs`."""

    def __init__(self, build: Path, verbose: bool, total: int):
        self.logs = build / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.verbose, self.total, self.done = verbose, total, 0
        self.cli = str(Path(sys.executable).with_name("ray-router"))

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start `ray-router ARGS` for stage `name` (its output to its log unless verbose)."""
        output = None if self.verbose else open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS
        if self.verbose:
            click.echo(f"$ ray-router {' '.join(args)}")
        return subprocess.Popen([self.cli, *args], stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def run(self, name: str, title: str, args: list[str], skip: bool = False, progress=None) -> None:
        """Run one stage to its end (a UserError naming its log when it fails); `progress(seconds)` is called
        every second while it runs."""
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {title}"
        if skip:
            click.echo(f"{prefix}: already done (reused)")
            return
        click.echo(f"{prefix} ...")
        started = time.monotonic()
        process = self.start(name, args)
        try:
            while process.poll() is None:
                time.sleep(1)
                if progress is not None:
                    progress(time.monotonic() - started)
        finally:
            _stop(process)
        if process.returncode:
            raise UserError(f"{title} failed (exit {process.returncode}); see {self.logs / f'{name}.log'}")
        click.echo(f"{prefix}: done in {time.monotonic() - started:.0f} s")


def run_demo(data: Path, build: Path, verbose: bool) -> None:
    """The whole demo (see the module docstring)."""
    source = data / "routerbench"
    if not source.is_dir() or not any(source.glob("*.csv")):
        raise UserError(f"no RouterBench data in {source}: get the RouterBench subset (the routerbench_zs CSVs of "
                        "the RouterDC repository, github.com/shuhao02/RouterDC) into <folder>/routerbench/ and run "
                        "`make demo DATA=<folder>`")
    stages = _Stages(build, verbose, total=7)
    dataset, features = build / "routerbench.parquet", build / "features" / "smollm2"
    scan, bundle, report = build / "scan", build / "router", build / "report"
    stages.run("import", "import the RouterBench data", ["data", "import", "routerbench", str(source),
                                                        "--out", str(dataset)], skip=dataset.is_file())
    stages.run("describe", "describe it", ["data", "describe", str(dataset)])
    if not verbose:
        click.echo("    " + (stages.logs / "describe.log").read_text().splitlines()[0])
    from tqdm import tqdm

    from ray_router.data.routing_dataset import RoutingDataset

    rows = len(RoutingDataset.read(dataset))
    with tqdm(total=rows, unit="query", desc="    features", disable=None, leave=False) as bar:
        def extracted(_: float) -> None:
            bar.update(_stored_rows(features) - bar.n)

        stages.run("extract", f"extract SmolLM2-135M prefill features (layers {DEMO_LAYERS}, last "
                   f"{DEMO_MAX_TOKENS} tokens)", ["extract", "--data", str(dataset), "--encoder", "smollm2-135m",
                   "--layers", DEMO_LAYERS, "--pooling", "last,mean", "--max-tokens", str(DEMO_MAX_TOKENS),
                   "--shard-rows", "64", "--out", str(features)],
                   skip=(features / "manifest.json").is_file(), progress=extracted)
    stages.run("scan", "scan the layers", ["scan-layers", "--data", str(dataset), "--features", str(features),
                                           "--out", str(scan)], skip=(scan / "selection.json").is_file())
    stages.run("train", "train the router on Ray Train", ["train", "--data", str(dataset), "--features",
               str(features), "--scan", str(scan), "--out", str(bundle)], skip=_loads(bundle))
    stages.run("evaluate", "evaluate it against the baselines", ["evaluate", "--bundle", str(bundle), "--data",
               str(dataset), "--features", str(features), "--out", str(report)],
               skip=_newer(report / "metrics.json", bundle / "router.json"))
    stages.done += 1
    click.echo(f"[{stages.done}/{stages.total}] serve it on Ray Serve and send it requests ...")
    _serve_and_ask(stages, bundle)
    click.echo("\nHeadline (test split, operating points chosen on validation):")
    click.echo(_headline(report / "report.md"))
    click.echo(f"\nreport: {report / 'report.md'}   plot: {report / 'cost_accuracy.png'}   bundle: {bundle}")
    click.echo(f"logs: {stages.logs}/")


def _serve_and_ask(stages: _Stages, bundle: Path) -> None:
    """Serve the bundle, route two questions, chat with one (streamed too), stop the server."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = stages.start("serve", ["serve", str(SERVE_CONFIG), "--bundle", str(bundle), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server, stages.logs / "serve.log")
        with httpx.Client(base_url=url, timeout=180) as client:
            routed = client.post("/v1/route", json={"prompts": QUESTIONS}).json()
            for question, decision in zip(QUESTIONS, routed["decisions"]):
                target = decision["target"]
                click.echo(f"    route: {question[:60]}...\n      -> {target} (p = {decision['probabilities'][target]:.3f}, "
                           f"expected ${decision['expected_cost_usd'][target]:.2e}; fallbacks "
                           f"{', '.join(decision['fallbacks'][:3])}, ...)")
            chat = {"model": "router", "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 16}
            answer = client.post("/v1/chat/completions", json=chat).json()
            click.echo(f"    chat: {answer['router']['target']} answered (a local stand-in model): "
                       f"{answer['choices'][0]['message']['content'].strip()!r}")
            pieces = []
            with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        pieces.append(choices[0].get("delta", {}).get("content") or "")
            click.echo(f"    streamed: {''.join(pieces).strip()!r} ({len(pieces)} chunks)")
    finally:
        _stop(server)
    click.echo(f"[{stages.done}/{stages.total}] served, answered and stopped (the server's log: {stages.logs}/serve.log)")


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"the server stopped (exit {server.returncode}); see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise UserError(f"the server did not answer within {timeout_s:.0f} s; see {log}")


def _stop(process: subprocess.Popen) -> None:
    """Stop a stage's process group: SIGINT (a clean Ray and Serve shutdown), then SIGKILL."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _loads(bundle: Path) -> bool:
    """Whether `bundle` is a router this version loads (a bundle of an older version is trained again)."""
    from ray_router.router import Router

    try:
        Router.load(bundle)
    except UserError:
        return False
    return True


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime > than.stat().st_mtime


def _stored_rows(features: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(shard).num_rows for shard in (features / "shards").glob("part-*.parquet"))


def _headline(report_md: Path) -> str:
    """The headline table of report.md."""
    lines = report_md.read_text().splitlines()[report_md.read_text().splitlines().index("## Headline") + 2:]
    return "\n".join(lines[:lines.index("")] if "" in lines else lines)


@click.command("demo")
@click.option("--data", "data_dir", default="../shared/data", show_default=True, envvar="DATA",
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding routerbench/ (the RouterBench CSVs).")
@click.option("--build", default="build", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the dataset, features, router, report and logs go.")
@click.option("--verbose", "-v", is_flag=True, envvar="V", help="Show every command's own output.")
@ray_address_option
def demo(data_dir: Path, build: Path, verbose: bool, address: str | None) -> None:
    """The whole pipeline on RouterBench, ending with the router served and answering requests."""
    if address:
        os.environ["RAY_ADDRESS"] = address
    run_demo(data_dir, build, verbose)
