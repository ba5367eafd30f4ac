"""`ray-router extract`: prefill features of a routing dataset into a resumable Parquet folder."""

import click

from ray_router.cli.options import ChoiceList, IntList, ray_address_option


@click.command()
@click.option("--data", required=True, help="Routing dataset (Parquet from `ray-router data import`).")
@click.option("--encoder", required=True, help="smollm2-135m, minilm-l6, a local folder, a .gguf file or a hub id.")
@click.option("--layers", required=True, type=IntList(), help="Layers to keep, e.g. 8,12,16 or 0-30 (0 = embeddings).")
@click.option("--pooling", "poolings", default="last", type=ChoiceList(["last", "mean"]), show_default=True)
@click.option("--out", required=True, help="Feature folder (local path or cloud URI); reruns resume into it.")
@click.option("--limit", type=int, default=None, help="Only the first N queries of the dataset.")
@click.option("--max-tokens", type=int, default=2048, show_default=True, help="Truncate longer prompts.")
@click.option("--truncation-side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="left keeps the END of long prompts (the question of a few-shot prompt).")
@click.option("--no-chat-template", is_flag=True, help="Feed the raw prompt instead of a chat-formatted user turn.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: float32 on CPU, bfloat16 on GPU.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--concurrency", type=int, default=None, help="Encoder actors (default: from cluster resources).")
@click.option("--num-gpus-per-worker", type=float, default=None, help="Default: 1 when the cluster has GPUs, else 0.")
@click.option("--cpus-per-worker", type=float, default=0.5, show_default=True)
@click.option("--cache-dir", default=None, envvar="RAY_ROUTER_CACHE", help="Where converted GGUF weights are cached.")
@ray_address_option
def extract(data, encoder, layers, poolings, out, limit, max_tokens, truncation_side, no_chat_template, dtype,
            batch_size, concurrency, num_gpus_per_worker, cpus_per_worker, cache_dir, address):
    """Extract prefill features of DATA's prompts with ENCODER into OUT (resumable)."""
    from ray_router.features.extraction import extract_features

    result = extract_features(
        data, encoder, layers, poolings, out,
        limit=limit, max_tokens=max_tokens, truncation_side=truncation_side,
        chat_template=not no_chat_template, dtype=dtype, batch_size=batch_size, concurrency=concurrency,
        num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker, cache_dir=cache_dir,
        ray_address=address,
    )
    click.echo(
        f"{out}: {result.manifest['rows']} queries with features "
        f"({result.computed} computed now, {result.already_done} already there), "
        f"schema {result.manifest['schema']['schema_id']}"
    )
