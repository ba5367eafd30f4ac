"""Resolving encoder specs: aliases, GGUF files, folders, hub ids; the hash and conversion caches."""

import hashlib
import os
from pathlib import Path

import pytest

from ray_router.errors import UserError
from ray_router.features.sources import (
    CACHE_ENV,
    convert_gguf,
    encoder_cache_dir,
    file_sha256,
    folder_sha256,
    resolve_encoder,
)


@pytest.fixture(scope="module")
def smol():
    """The SmolLM2 alias resolved (its GGUF converted once into the encoder cache)."""
    return resolve_encoder("smollm2-135m")


def test_gguf_alias_resolves_to_a_converted_folder(smol):
    assert smol.kind == "gguf" and smol.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert smol.description == f"gguf:{Path(smol.location).name}"  # no machine path
    assert (smol.folder / "config.json").is_file() and (smol.folder / "model.safetensors").is_file()
    assert (smol.folder / "tokenizer.json").is_file() and (smol.folder / "chat_template.jinja").is_file()
    assert smol.folder.parent == encoder_cache_dir() / "gguf" and smol.weight_hash[:16] in smol.folder.name
    digest = hashlib.sha256(Path(smol.location).read_bytes()).hexdigest()
    assert smol.weight_hash == digest


def test_specs_naming_the_same_weights_resolve_alike(smol, tmp_path):
    link = tmp_path / "renamed.gguf"
    link.symlink_to(smol.location)
    for spec in (smol.location, str(link)):
        other = resolve_encoder(spec)
        assert (other.kind, other.folder, other.weight_hash) == ("gguf", smol.folder, smol.weight_hash)
        assert other.spec == spec


def test_conversion_is_reused_not_redone(smol):
    marker = smol.folder / "ray_router_source.json"
    before = marker.stat().st_mtime_ns
    assert convert_gguf(Path(smol.location), smol.weight_hash, encoder_cache_dir()) == smol.folder
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in smol.folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_folder_alias_and_folder_hash(tmp_path):
    minilm = resolve_encoder("minilm-l6")
    assert minilm.kind == "folder" and minilm.folder.name == "model" and (minilm.folder / "vocab.txt").is_file()
    assert minilm.weight_hash == folder_sha256(minilm.folder, tmp_path)  # independent of the hash cache
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (copy / name).symlink_to(minilm.folder / name)
    assert resolve_encoder(str(copy)).weight_hash != minilm.weight_hash  # special_tokens_map.json is missing
    (copy / "special_tokens_map.json").symlink_to(minilm.folder / "special_tokens_map.json")
    assert resolve_encoder(str(copy)).weight_hash == minilm.weight_hash


def test_file_hash_is_cached_by_path_size_and_mtime(tmp_path):
    data = tmp_path / "weights.bin"
    data.write_bytes(b"abc" * 1000)
    cache = tmp_path / "cache"
    assert file_sha256(data, cache) == hashlib.sha256(b"abc" * 1000).hexdigest()
    (record,) = (cache / "hashes").iterdir()
    record.write_text("from-the-cache")
    assert file_sha256(data, cache) == "from-the-cache"  # not re-read
    data.write_bytes(b"abcd" * 1000)  # new size and mtime: hashed again
    assert file_sha256(data, cache) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_cache_dir_argument_then_environment_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert encoder_cache_dir().parts[-2:] == ("ray-router", "encoders")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert encoder_cache_dir() == tmp_path / "env" / "encoders"
    assert encoder_cache_dir(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-encoder", "not a known alias"),
        ("some-org/no-such-model@main", "local Hugging Face cache"),
        ("./nowhere/model.gguf", "no such .gguf file"),
        ("/nowhere/at/all", "no such .gguf file"),
    ],
)
def test_unknown_specs_raise_user_errors(spec, message):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: no network wait
    with pytest.raises(UserError, match=message):
        resolve_encoder(spec)


def test_folders_that_are_not_models_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no .*safetensors"):
        resolve_encoder(str(tmp_path))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(UserError, match="cannot convert GGUF"):
        resolve_encoder(str(fake), cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]  # nothing half-written
