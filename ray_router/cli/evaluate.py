"""`ray-router evaluate`: router vs baselines on the test split -> metrics.json, report.md, plots."""

import click

from ray_router.cli.options import ChoiceList, key_value_pairs, ray_address_option
from ray_router.evaluation.job import BASELINES


@click.command()
@click.option("--bundle", required=True, help="Router bundle from `ray-router train`.")
@click.option("--data", required=True, help="The routing dataset the router was trained on.")
@click.option("--features", required=True, multiple=True,
              help="A prefill feature folder the router reads (repeat for each encoder of the router).")
@click.option("--out", required=True, help="Report folder (metrics.json, report.md, PNG plots).")
@click.option("--baselines", default="all", type=ChoiceList(["all", "none", *BASELINES]), show_default=True,
              help="Comma-separated: knn, semantic-trunk, task-label, all or none.")
@click.option("--semantic-features", default=None,
              help="Feature folder for all-MiniLM-L6-v2 embeddings (default OUT/semantic_features; extracted if missing).")
@click.option("--policy", type=click.Choice(["tolerance", "utility", "anchored"]), default="anchored",
              show_default=True, help="The policy whose parameter is swept for the cost-accuracy curves "
              "(anchored: anchor and margin fitted on each router's validation rows, then lambda swept).")
@click.option("--compare", multiple=True, metavar="NAME=BUNDLE",
              help="Another router bundle trained on the same data, evaluated beside it (repeat).")
@click.option("--local", is_flag=True, help="Train the semantic baseline in this process instead of Ray Train.")
@ray_address_option
def evaluate(bundle, data, features, out, baselines, semantic_features, policy, compare, local, address):
    """Evaluate BUNDLE against the baselines on DATA's test split."""
    from ray_router.evaluation.job import run_evaluation
    from ray_router.evaluation.report import headline_table
    from ray_router.resources import ensure_ray

    chosen = BASELINES if "all" in baselines else tuple(b for b in baselines if b != "none")
    ensure_ray(address)
    results = run_evaluation(bundle, data, list(features), out, baselines=chosen, semantic_features=semantic_features,
                             policy_kind=policy, compare=key_value_pairs(compare, "--compare", "NAME=BUNDLE"),
                             use_ray=not local)
    click.echo(headline_table(results))
    click.echo(f"wrote {out}/metrics.json, report.md and plots")
