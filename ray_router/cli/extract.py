"""`ray-router extract`: prefill features of a routing dataset into a resumable Parquet folder."""

import click

from ray_router.cli.options import (
    ChoiceList,
    IntList,
    batch_size_option,
    ray_address_option,
    shard_rows_option,
    worker_options,
    worker_resources,
)


@click.command()
@click.option("--data", required=True, help="Routing dataset (Parquet from `ray-router data import`).")
@click.option("--encoder", required=True, help="smollm2-135m, minilm-l6, a local folder, a .gguf file or a hub id.")
@click.option("--layers", required=True, type=IntList(), help="Layers to keep, e.g. 8,12,16 or 0-30 (0 = embeddings).")
@click.option("--pooling", "poolings", default="last", type=ChoiceList(["last", "mean"]), show_default=True)
@click.option("--out", required=True, help="Feature folder (local path or cloud URI); reruns resume into it.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N queries of the dataset.")
@click.option("--max-tokens", type=int, default=2048, show_default=True, help="Truncate longer prompts.")
@click.option("--truncation-side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="left keeps the END of long prompts (the question of a few-shot prompt).")
@click.option("--no-chat-template", is_flag=True, help="Feed the raw prompt instead of a chat-formatted user turn.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: float32 on CPU, bfloat16 on GPU.")
@batch_size_option
@shard_rows_option
@worker_options
@click.option("--cache-dir", default=None, envvar="RAY_ROUTER_CACHE", help="Where converted GGUF weights are cached.")
@ray_address_option
def extract(data, encoder, layers, poolings, out, limit, max_tokens, truncation_side, no_chat_template, dtype,
            batch_size, shard_rows, concurrency, num_gpus_per_worker, cpus_per_worker, cache_dir, address):
    """Extract prefill features of DATA's prompts with ENCODER into OUT (resumable)."""
    from ray_router.features.extraction import extract_features
    from ray_router.features.schema import EncoderConfig

    config = EncoderConfig.from_user(encoder=encoder, layers=layers, poolings=poolings, max_tokens=max_tokens,
                                     truncation_side=truncation_side, chat_template=not no_chat_template, dtype=dtype)
    result = extract_features(
        data, config, out, limit=limit, batch_size=batch_size, shard_rows=shard_rows,
        resources=worker_resources(concurrency, num_gpus_per_worker, cpus_per_worker), cache_dir=cache_dir,
        ray_address=address,
    )
    click.echo(
        f"{out}: {result.manifest['rows']} queries with features "
        f"({result.computed} computed now, {result.already_done} already there), "
        f"schema {result.manifest['schema']['schema_id']}"
    )
