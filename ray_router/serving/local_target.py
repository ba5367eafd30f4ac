"""A causal LM generating chat answers on a Serve replica: the `local` target backend (demos and tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import torch
from ray import serve
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from ray_router.features.sources import resolve_encoder
from ray_router.resources import set_torch_threads


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class LocalGenerator:
    """One transformers causal LM (e.g. SmolLM2-135M-Instruct) answering chat messages with its chat template."""

    def __init__(self, model: str, cache_dir: str | None = None, torch_threads: int | None = None):
        set_torch_threads(torch_threads)
        folder = resolve_encoder(model, cache_dir).folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        self._lock = threading.Lock()  # one generate() at a time on this replica

    def _inputs(self, messages: list[dict]) -> dict:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        return {k: v.to(self.model.device) for k, v in ids.items()}

    def _generate_kwargs(self, max_new_tokens: int, temperature: float | None) -> dict:
        sample = bool(temperature)
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": sample,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        return kwargs | ({"temperature": temperature} if sample else {"temperature": None, "top_p": None, "top_k": None})

    def _complete(self, messages: list[dict], max_new_tokens: int, temperature: float | None) -> dict:
        inputs = self._inputs(messages)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(max_new_tokens, temperature))
        new = output[0, inputs["input_ids"].shape[1]:]
        finished = bool(len(new)) and int(new[-1]) == self.tokenizer.eos_token_id
        return {
            "text": self.tokenizer.decode(new, skip_special_tokens=True),
            "finish_reason": "stop" if finished else "length",
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "completion_tokens": int(len(new)),
        }

    async def complete(self, messages: list[dict], max_new_tokens: int, temperature: float | None = None) -> dict:
        """The whole answer: text, finish_reason and token counts."""
        return await asyncio.to_thread(self._complete, messages, max_new_tokens, temperature)

    async def stream(self, messages: list[dict], max_new_tokens: int,
                     temperature: float | None = None) -> AsyncIterator[str]:
        """The answer as text pieces, as they are generated (call with `handle.options(stream=True)`)."""
        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)

        def generate() -> None:
            with self._lock, torch.inference_mode():
                self.model.generate(**inputs, **self._generate_kwargs(max_new_tokens, temperature), streamer=streamer)

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        pieces = iter(streamer)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            if piece:
                yield piece
        worker.join()
