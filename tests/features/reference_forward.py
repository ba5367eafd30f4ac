"""An independent reference for prefill features: a plain transformers forward of the full model."""

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ray_router.features.sources import resolve_encoder


def template_ids(tokenizer, prompt: str) -> list[int]:
    """The standard transformers way: one user message + generation prompt, tokenized by the template."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_dict=False)


def plain_forward_features(spec: str, prompts: list[str], layers: list[int]) -> dict[str, np.ndarray]:
    """{"L<layer>_<pooling>": (n, hidden)} from the full model, one unpadded prompt at a time."""
    folder = resolve_encoder(spec).folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([template_ids(tokenizer, prompt)])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            for layer in layers:
                out.setdefault(f"L{layer}_last", []).append(hidden[layer][0, -1].numpy())
                out.setdefault(f"L{layer}_mean", []).append(hidden[layer][0].mean(0).numpy())
    return {name: np.stack(rows) for name, rows in out.items()}
