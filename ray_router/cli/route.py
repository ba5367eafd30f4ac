"""`ray-router route`: offline batch routing of a query file into a resumable Parquet folder."""

import json

import click

from ray_router.cli.options import (
    batch_size_option,
    ray_address_option,
    shard_rows_option,
    worker_options,
    worker_resources,
)


@click.command()
@click.option("--bundle", required=True, help="Router bundle folder (from `ray-router train`).")
@click.option("--input", "input_path", required=True,
              help="Queries: a .parquet, .jsonl or .csv file or a folder of them (local path or cloud URI).")
@click.option("--out", required=True, help="Decision folder (local path or cloud URI); reruns resume into it.")
@click.option("--policy", "kind", type=click.Choice(["tolerance", "argmax", "utility", "budget", "anchored"]),
              default=None, help="Default: the bundle's default policy.")
@click.option("--tau", type=float, default=None, help="tolerance: probability given up for a cheaper target.")
@click.option("--lam", type=float, default=None,
              help="utility, anchored: weight of normalised cost; budget: the lambda fitted on validation (required).")
@click.option("--budget", type=float, default=None, help="budget: mean cost per query (USD), with its fitted --lam.")
@click.option("--anchor", default=None, help="anchored: the target to stay on (fitted: the best single target on the "
              "training labels).")
@click.option("--margin", type=float, default=None,
              help="anchored: probability advantage another target needs to be chosen instead (fitted on validation).")
@click.option("--allowed", default=None, help="Comma-separated targets that may be chosen (default: all).")
@click.option("--prompt-col", default="prompt", show_default=True, help="Column holding the prompt text.")
@click.option("--id-col", default=None,
              help="Column holding unique query ids (default: sha256(prompt) prefixes, -2, -3, ... on repeats).")
@batch_size_option
@shard_rows_option
@worker_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N queries of the input.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@ray_address_option
def route(bundle, input_path, out, kind, tau, lam, budget, anchor, margin, allowed, prompt_col, id_col, batch_size,
          shard_rows, concurrency, num_gpus_per_worker, cpus_per_worker, limit, as_json, address):
    """Route every query of INPUT with the router BUNDLE; decisions and a summary go to OUT (resumable)."""
    from dataclasses import asdict

    from ray_router.batch.routing import route_queries
    from ray_router.batch.summary import format_summary

    given = {"kind": kind, "tau": tau, "lam": lam, "budget": budget, "anchor": anchor, "margin": margin,
             "allowed": [a.strip() for a in allowed.split(",") if a.strip()] if allowed is not None else None}
    result = route_queries(
        bundle, input_path, out, {k: v for k, v in given.items() if v is not None},
        prompt_col=prompt_col, id_col=id_col, limit=limit, batch_size=batch_size, shard_rows=shard_rows,
        resources=worker_resources(concurrency, num_gpus_per_worker, cpus_per_worker), ray_address=address,
    )
    if as_json:
        click.echo(json.dumps(asdict(result.summary), indent=2, sort_keys=True))
    else:
        click.echo(f"{out}: {result.computed} routed now, {result.already_done} already there")
        click.echo(format_summary(result.summary))
