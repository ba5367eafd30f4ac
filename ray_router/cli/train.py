"""`ray-router scan-layers` and `ray-router train`: choose layers, fit the router, write a bundle."""

import click

from ray_router.cli.options import ray_address_option


@click.command("scan-layers")
@click.option("--data", required=True, help="Routing dataset (Parquet).")
@click.option("--features", required=True, help="Feature folder from `ray-router extract`.")
@click.option("--out", required=True, help="Folder for scan.csv, scan.png and selection.json.")
@click.option("--k", type=int, default=None, help="PCA dimensions for the probes (default 64).")
@click.option("--select", type=click.Choice(["j", "auc"]), default=None, help="Selection criterion (default j).")
@click.option("--config", "config_path", default=None, help="train.yaml; its `scan:` section is used.")
@click.option("--local", is_flag=True, help="Compute in this process instead of Ray tasks.")
@ray_address_option
def scan_layers_command(data, features, out, k, select, config_path, local, address):
    """Fisher separability J, d_eff and probe AUC per (layer, pooling, target); pick layers."""
    from ray_router.data.routing_dataset import RoutingDataset
    from ray_router.features.store import FeatureStore
    from ray_router.model.router_training import RouterTrainConfig, run_scan
    from ray_router.model.scan_files import write_scan
    from ray_router.model.scan_report import scan_table
    from ray_router.resources import ensure_ray

    config = RouterTrainConfig.from_yaml(config_path).scan
    config = config.model_copy(update={k_: v for k_, v in {"k": k, "select": select}.items() if v is not None})
    dataset, store = RoutingDataset.read(data), FeatureStore.open(features)
    if not local:
        ensure_ray(address)
    result = run_scan(dataset, store, config, use_ray=not local)
    write_scan(result, out)
    click.echo(scan_table(result))
    click.echo(f"wrote {out}/scan.csv, scan.png, selection.json")


@click.command()
@click.option("--data", required=True, help="Routing dataset (Parquet).")
@click.option("--features", required=True, multiple=True,
              help="Feature folder from `ray-router extract` (repeat to combine several encoders).")
@click.option("--out", required=True, help="Router bundle folder to write.")
@click.option("--scan", multiple=True,
              help="A scan-layers folder whose selection to use, one per --features in the same order "
                   "(default: scan now).")
@click.option("--config", "config_path", default=None, help="train.yaml (RouterTrainConfig; see README).")
@click.option("--local", is_flag=True, help="Train in this process instead of on Ray Train.")
@ray_address_option
def train(data, features, out, scan, config_path, local, address):
    """Fit SharedTrunkNet on DATA's training split and write a self-describing router bundle."""
    from ray_router.model.router_training import RouterTrainConfig, train_router
    from ray_router.resources import ensure_ray

    config = RouterTrainConfig.from_yaml(config_path)
    if not local:
        ensure_ray(address)
    router = train_router(data, list(features), out, scan=list(scan) or None, config=config, use_ray=not local)
    summary = router.manifest.validation
    auc = summary.holdout_mean_auc
    members = f", {len(summary.kept_members)} members kept of {len(summary.member_val_losses)}" \
        if summary.member_val_losses else ""
    click.echo(
        f"{out}: {len(router.targets)} targets, head {router.manifest.head['kind']}{members}, "
        f"holdout mean AUC {'n/a' if auc is None else f'{auc:.3f}'} on {summary.holdout_rows} rows"
    )
    for candidate in summary.candidates:
        click.echo(f"  candidate {candidate['override']}: holdout log-loss {candidate['holdout_log_loss']:.4f}, "
                   f"mean AUC {candidate['holdout_mean_auc']:.3f}" + ("  <- kept" if candidate["chosen"] else ""))
    if summary.policy_folds:
        click.echo(f"  the {summary.fit_rows} fit rows predicted out of fold ({summary.policy_folds} folds), for "
                   "choosing policy parameters")
