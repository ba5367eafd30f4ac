"""The prefill encoder: pooled hidden states of chosen layers of an open-weight LLM, for a batch of prompts.

Only the transformer blocks up to the deepest requested layer are kept and run; the features of layer k
equal `hidden_states[k]` of the full model's forward (0 = embedding output; the last layer, as in
transformers, is the output after the final norm). Used unchanged by extraction, batch routing and serving.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from ray_router.errors import UserError
from ray_router.features.prompt_tokenizer import PromptTokenizer
from ray_router.features.schema import EncoderConfig, FeatureSchema, column_name
from ray_router.features.sources import EncoderSource, resolve_encoder

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIDES = ("left", "right")


class PrefillEncoder:
    """Pooled prefill hidden states of an encoder LLM, truncated to its deepest requested layer.

    encode(prompts) -> {"L{layer}_{pooling}": (n, hidden) float32 array}, rows in the input order.

    config: what to compute (see EncoderConfig). device: default CUDA when torch sees a GPU, else CPU.
    cache_dir: encoder cache (GGUF conversions). padding_side: how batches are padded; features do not
    depend on it (beyond float rounding).
    """

    def __init__(
        self,
        config: EncoderConfig,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        padding_side: str = "right",
    ) -> None:
        _check_choice("padding_side", padding_side, _SIDES)
        plan = _plan(config, device, cache_dir)
        self.schema: FeatureSchema = plan.schema
        self.source = plan.source
        self.prompt_tokenizer = plan.prompt_tokenizer
        self.layers, self.poolings, self.padding_side = self.schema.layers, self.schema.poolings, padding_side
        self.device = torch.device(plan.device_type if device is None else device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested, but torch sees no CUDA GPU")
        self.dtype = _DTYPES[self.schema.dtype]
        self.model, blocks = _load_truncated(self.source.folder, max(self.layers), self.dtype, self.device)
        self._forward_args = set(inspect.signature(self.model.forward).parameters)
        # Right padding in a causal model: real tokens never attend to the padding, so no mask is needed
        # and SDPA runs its is_causal kernel (~20 % faster than with an explicit mask, same values).
        self._mask_needed = padding_side == "left" or not any(
            getattr(module, "is_causal", False) is True for module in self.model.modules()
        )
        self._pad_id = self.prompt_tokenizer.tokenizer.pad_token_id or 0
        # The last layer of the full model is its output after the final norm, as in hidden_states[-1].
        self._layer_from_output = plan.total_layers if plan.total_layers in self.layers else None
        self._install_hooks(blocks)
        self._lock = threading.Lock()  # hooks write per-call state: one forward at a time per encoder
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # real, last index, count
        self._pooled: dict[str, torch.Tensor] = {}

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """The token ids the encoder runs on: templated and truncated (UserError for empty prompts and for text
        that is not valid Unicode)."""
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise UserError(f"prompt at row {row} is not text (got {type(prompt).__name__})")
            if not prompt.strip():
                raise UserError(f"prompt at row {row} is empty or whitespace only")
            if not is_valid_text(prompt):
                raise UserError(f"prompt at row {row} is not valid Unicode text (a lone surrogate, e.g. \\ud800)")
        return self.prompt_tokenizer(prompts)

    def encode(self, prompts: Sequence[str], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Pooled features per schema column: (len(prompts), hidden_size) float32, rows in input order."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        token_ids = self.tokenize(prompts)
        features = {
            column: np.empty((len(token_ids), self.schema.hidden_size), np.float32) for column in self.schema.columns
        }
        order = sorted(range(len(token_ids)), key=lambda row: -len(token_ids[row]))  # little padding per batch
        starts = range(0, len(order), batch_size)
        quiet = True if len(starts) < 2 else None  # None: a bar on terminals only
        for start in tqdm(starts, desc="encode", unit="batch", leave=False, disable=quiet):
            rows = order[start : start + batch_size]
            for column, values in self._encode_batch([token_ids[row] for row in rows]).items():
                features[column][rows] = values
        return features

    def _encode_batch(self, token_ids: list[list[int]]) -> dict[str, np.ndarray]:
        """Features of one padded batch, as {column: (batch, hidden) array}."""
        lengths = np.array([len(ids) for ids in token_ids])
        width = int(lengths.max())
        input_ids = np.full((len(token_ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(token_ids), width), dtype=bool)
        for row, ids in enumerate(token_ids):
            span = slice(0, len(ids)) if self.padding_side == "right" else slice(width - len(ids), width)
            input_ids[row, span] = ids
            mask[row, span] = True
        last = lengths - 1 if self.padding_side == "right" else np.full(len(lengths), width - 1)
        real = torch.from_numpy(mask).to(self.device)
        inputs = {"input_ids": torch.from_numpy(input_ids).to(self.device)}
        if self._mask_needed:
            inputs["attention_mask"] = real.long()
        if "position_ids" in self._forward_args:  # positions count real tokens only, whatever the padding side
            inputs["position_ids"] = (real.long().cumsum(1) - 1).clamp(min=0)
        if "use_cache" in self._forward_args:
            inputs["use_cache"] = False
        with self._lock, torch.inference_mode():
            self._batch = (real, torch.from_numpy(last).to(self.device), real.sum(1, keepdim=True))
            self._pooled = {}
            output = self.model(**inputs)
            if self._layer_from_output is not None:
                self._pool(self._layer_from_output, output.last_hidden_state)
            return {column: values.cpu().numpy() for column, values in self._pooled.items()}

    def _install_hooks(self, blocks: nn.ModuleList) -> None:
        """Pool each requested layer as soon as its block has run; nothing else is kept."""
        for layer in self.layers:
            if layer == 0:  # the embedding output is the first block's input
                blocks[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            elif layer != self._layer_from_output:
                blocks[layer - 1].register_forward_hook(self._hook(layer))

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pool(0, args[0] if args else kwargs["hidden_states"])

    def _hook(self, layer: int):
        def pool_output(module: nn.Module, args: tuple, output) -> None:
            self._pool(layer, output[0] if isinstance(output, tuple) else output)

        return pool_output

    def _pool(self, layer: int, hidden: torch.Tensor) -> None:
        """Store the requested poolings of one layer's (batch, tokens, hidden) states for the current batch."""
        real, last, count = self._batch
        for pooling in self.poolings:
            if pooling == "last":
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            else:  # where(), not a product: padding positions may hold non-finite values
                pooled = torch.where(real[..., None], hidden, 0).sum(1, dtype=torch.float32) / count
            self._pooled[column_name(layer, pooling)] = pooled


def is_valid_text(text: str) -> bool:
    """True when `text` can be encoded as UTF-8 (JSON may carry lone surrogates, which tokenizers refuse)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_schema(
    config: EncoderConfig, device: str | None = None, cache_dir: str | Path | None = None
) -> FeatureSchema:
    """The schema a PrefillEncoder(config, device) computes, without loading the weights (e.g. on a Ray driver).

    The device is only used for the default dtype: it need not exist on this machine.
    """
    return _plan(config, device, cache_dir).schema


class _Plan(NamedTuple):
    """Everything an encoder needs before its weights are loaded."""

    source: EncoderSource
    total_layers: int
    device_type: str
    prompt_tokenizer: PromptTokenizer
    schema: FeatureSchema


def _plan(config: EncoderConfig, device, cache_dir) -> _Plan:
    """Resolve the spec, load config and tokenizer, check the layers and build the schema."""
    try:
        device_type = torch.device(device).type if device is not None else None
    except RuntimeError as error:
        raise UserError(f"unknown device {device!r}") from error
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_encoder(config.encoder, cache_dir)
    model_config = AutoConfig.from_pretrained(source.folder)
    _check_layers(config, model_config.num_hidden_layers)
    # Absolute position embeddings (BERT: 512) cap the token budget.
    max_tokens = min(config.max_tokens, getattr(model_config, "max_position_embeddings", None) or config.max_tokens)
    prompt_tokenizer = PromptTokenizer(
        AutoTokenizer.from_pretrained(source.folder), config.chat_template, max_tokens, config.truncation_side
    )
    resolved = {
        "dtype": config.dtype or ("bfloat16" if device_type == "cuda" else "float32"),
        "chat_template": prompt_tokenizer.template is not None,
        "max_tokens": max_tokens,
    }
    schema = FeatureSchema(
        **config.model_dump() | resolved,
        source=source.description,
        weight_hash=source.weight_hash,
        hidden_size=model_config.hidden_size,
        template_hash=prompt_tokenizer.template_hash,
    )
    return _Plan(source, model_config.num_hidden_layers, device_type, prompt_tokenizer, schema)


def _load_truncated(folder: Path, depth: int, dtype: torch.dtype, device: torch.device):
    """The base model (no LM head) with only its first `depth` blocks (at least one), and those blocks."""
    model: PreTrainedModel = AutoModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    total = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == total]
    if not found:
        raise UserError(f"encoder {folder}: cannot find the {total} blocks of {type(model).__name__}")
    name, blocks = found[0]
    kept = nn.ModuleList(list(blocks)[: max(depth, 1)])
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, kept)
    model.config.num_hidden_layers = len(kept)
    return model.to(device).eval(), kept


def _check_layers(config: EncoderConfig, total: int) -> None:
    """UserError for a layer the encoder does not have."""
    for layer in config.layers:
        if layer > total:
            raise UserError(
                f"layer {layer} is out of range for encoder {config.encoder!r}: "
                f"valid layers are 0..{total} (0 = embedding output)"
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
