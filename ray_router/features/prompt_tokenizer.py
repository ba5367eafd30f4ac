"""Prompt preparation for the prefill encoder: chat-template wrapping, tokenization and truncation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from ray_router.errors import UserError

# A long prompt is cut to this many characters per token of budget before tokenizing (keeping the side
# that survives truncation); a cut leaving fewer than max_tokens + margin prompt tokens is redone uncut, so
# the kept tokens, far from the cut, are exactly those of the whole prompt.
_CHARS_PER_TOKEN_BOUND = 16
_CUT_MARGIN_TOKENS = 64
_SENTINEL = "\u2063RAY_ROUTER_PROMPT\u2063"


class PromptTokenizer:
    """Chat-template wrapping, tokenization and truncation of prompts to at most `max_tokens` token ids.

    Truncation drops prompt tokens only: the template's tokens before the prompt (system prompt, BOS) and
    after it (end of turn, generation prompt), or the tokenizer's own special tokens, always survive.
    """

    def __init__(self, tokenizer, chat_template: bool, max_tokens: int, truncation_side: str) -> None:
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template if chat_template and tokenizer.chat_template else None
        self.max_tokens = max_tokens
        self.truncation_side = truncation_side
        sample = self._apply_template(_SENTINEL) if self.template else _SENTINEL
        self._prefix, _, self._suffix = sample.partition(_SENTINEL)
        tokenizer.model_max_length = 2**62  # lengths are ours to enforce: silences "sequence too long"
        self._tokenize(["x"])  # a UserError now if max_tokens leaves no room for a prompt

    @property
    def template_hash(self) -> str | None:
        """sha256 of the chat template applied, None when prompts are plain text."""
        return None if self.template is None else hashlib.sha256(json.dumps(self.template).encode()).hexdigest()

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt: templated, special tokens added once, truncated to max_tokens."""
        cut = [self._cut(p) for p in prompts]
        result = self._tokenize(cut)
        for i, (prompt, short) in enumerate(zip(prompts, cut)):
            if short is not prompt and result[i][1] < self.max_tokens + _CUT_MARGIN_TOKENS:
                result[i] = self._tokenize([prompt])[0]  # the cut was too tight (very long tokens): redo uncut
        return [ids for ids, _ in result]

    def _cut(self, prompt: str) -> str:
        """The end (or start) of a very long prompt that can survive truncation; else the prompt itself."""
        bound = self.max_tokens * _CHARS_PER_TOKEN_BOUND
        if len(prompt) <= bound:
            return prompt
        return prompt[-bound:] if self.truncation_side == "left" else prompt[:bound]

    def _render(self, prompt: str) -> tuple[str, int, int]:
        """The text to tokenize and the character span of the prompt inside it."""
        if self.template is None:
            return prompt, 0, len(prompt)
        text = self._apply_template(prompt)
        # A template that changes around the content (rare) gets no protected head or tail.
        start = len(self._prefix) if text.startswith(self._prefix) else 0
        end = len(text) - len(self._suffix) if text.endswith(self._suffix) else len(text)
        return text, start, max(start, end)

    def _apply_template(self, prompt: str) -> str:
        """The prompt as one user message followed by the generation prompt."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _tokenize(self, prompts: Sequence[str]) -> list[tuple[list[int], int]]:
        """(truncated token ids, prompt tokens before truncation) per prompt."""
        rendered = [self._render(p) for p in prompts]
        encoded = self.tokenizer(
            [text for text, _, _ in rendered],
            add_special_tokens=self.template is None,  # a template writes its own BOS etc.: never twice
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )
        return [
            self._truncate(ids, offsets, special, start, end)
            for ids, offsets, special, (_, start, end) in zip(
                encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], rendered
            )
        ]

    def _truncate(self, ids, offsets, special, start: int, end: int) -> tuple[list[int], int]:
        """Keep the template/special tokens around the prompt and as many prompt tokens as fit."""
        inside = [not s and start <= a < end for (a, _), s in zip(offsets, special)]
        first = inside.index(True) if any(inside) else len(ids)
        last = len(inside) - inside[::-1].index(True) if any(inside) else len(ids)
        prompt_tokens = last - first
        if len(ids) <= self.max_tokens:
            return list(ids), prompt_tokens
        room = self.max_tokens - (len(ids) - prompt_tokens)
        if room < 1:
            raise UserError(f"max_tokens={self.max_tokens} is too small for this encoder's template and special tokens")
        kept = ids[last - room : last] if self.truncation_side == "left" else ids[first : first + room]
        return list(ids[:first]) + list(kept) + list(ids[last:]), prompt_tokens
