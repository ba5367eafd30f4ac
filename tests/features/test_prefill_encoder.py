"""PrefillEncoder on the real SmolLM2-135M (GGUF, converted once into the encoder cache) and MiniLM weights."""

import time

import numpy as np
import pydantic
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from ray_router.errors import UserError
from ray_router.features.prefill_encoder import PrefillEncoder, resolve_schema
from ray_router.features.schema import EncoderConfig, FeatureSchema
from ray_router.features.sources import resolve_encoder

PROMPTS = [
    "What is the capital of France?",
    "Q: A train leaves at 3 pm and travels 120 km at 60 km/h. When does it arrive?\nA:",
    "hi",
    "Which of these is a mammal? (A) shark (B) dolphin (C) trout (D) octopus. Answer with the letter only.",
]
LAYERS = [0, 2, 4]
TOLERANCE = 1e-4


def make_encoder(spec: str, padding_side: str = "right", **fields) -> PrefillEncoder:
    """A PrefillEncoder of `spec` with these EncoderConfig fields, built from user input."""
    return PrefillEncoder(EncoderConfig.from_user(encoder=spec, **fields), padding_side=padding_side)


@pytest.fixture(scope="module")
def smol():
    """The SmolLM2 encoder truncated to 4 of its 30 blocks, both poolings."""
    return make_encoder("smollm2-135m", layers=LAYERS, poolings=["last", "mean"])


@pytest.fixture(scope="module")
def reference():
    """hidden_states of a plain transformers forward of the full model: one right-padded batch of PROMPTS."""
    folder = resolve_encoder("smollm2-135m").folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = [_template_ids(tokenizer, prompt) for prompt in PROMPTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.inference_mode():
        hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hidden) == 31
    return ids, hidden


def _template_ids(tokenizer, prompt: str) -> list[int]:
    """The standard transformers way: one user message + generation prompt, tokenized by the template."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def _pooled(hidden: torch.Tensor, lengths: list[int], pooling: str) -> np.ndarray:
    if pooling == "last":
        return np.stack([hidden[i, n - 1].numpy() for i, n in enumerate(lengths)])
    return np.stack([hidden[i, :n].mean(0).numpy() for i, n in enumerate(lengths)])


def test_token_ids_are_the_chat_template_ids(smol, reference):
    ids, _ = reference
    assert smol.tokenize(PROMPTS) == ids
    assert ids[0].count(smol.prompt_tokenizer.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # no doubling


@pytest.mark.parametrize("layers", [LAYERS, [29, 30]], ids=["truncated", "full-depth"])
def test_features_equal_full_model_hidden_states(layers, smol, reference):
    ids, hidden = reference
    encoder = smol if layers == LAYERS else make_encoder("smollm2-135m", layers=layers, poolings=["last", "mean"])
    assert len(encoder.model.layers) == max(layers)  # only the blocks needed are kept
    features = encoder.encode(PROMPTS, batch_size=8)
    lengths = [len(row) for row in ids]
    assert len(set(lengths)) == len(lengths)  # different lengths in one batch
    for layer in layers:
        for pooling in ("last", "mean"):
            got = features[f"L{layer}_{pooling}"]
            assert got.dtype == np.float32 and got.shape == (len(PROMPTS), 576)
            diff = np.abs(got - _pooled(hidden[layer], lengths, pooling)).max()
            assert diff <= TOLERANCE, f"L{layer}_{pooling}: max abs diff {diff}"


def test_left_and_right_padding_and_batching_agree(smol):
    left = make_encoder("smollm2-135m", layers=LAYERS, poolings=["last", "mean"], padding_side="left")
    right_features = smol.encode(PROMPTS, batch_size=4)
    for column, values in left.encode(PROMPTS, batch_size=4).items():
        np.testing.assert_allclose(values, right_features[column], rtol=1e-5, atol=TOLERANCE, err_msg=column)
    one_by_one = smol.encode(PROMPTS, batch_size=1)  # no padding at all, and a different batch order
    for column, values in one_by_one.items():
        np.testing.assert_allclose(values, right_features[column], rtol=1e-5, atol=1e-3, err_msg=column)


def test_truncation_keeps_the_end_and_the_template():
    encoder = make_encoder("smollm2-135m", layers=[1], max_tokens=40)
    tokenizer = encoder.prompt_tokenizer.tokenizer
    prompt = " ".join(f"filler{i}" for i in range(200)) + " FINAL QUESTION: what is two plus two?"
    full = _template_ids(tokenizer, prompt)
    ids = encoder.tokenize([prompt])[0]
    assert len(ids) == 40 < len(full)
    head = next(i for i, (a, b) in enumerate(zip(ids, full)) if a != b)  # the template head is kept as is
    assert tokenizer.decode(ids[:head]).endswith("<|im_start|>user\n")
    assert ids[head:] == full[len(full) - (40 - head) :]  # then the END of the prompt and the template tail
    assert tokenizer.decode(ids).endswith("what is two plus two?<|im_end|>\n<|im_start|>assistant\n")
    start = make_encoder("smollm2-135m", layers=[1], max_tokens=40, truncation_side="right").tokenize([prompt])[0]
    assert "filler0 " in tokenizer.decode(start) and "FINAL" not in tokenizer.decode(start)
    assert tokenizer.decode(start).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_200k_character_prompt_is_truncated_quickly_and_exactly(smol):
    words = [f"token{i % 977} and {i}," for i in range(20_000)]
    prompt = " ".join(words)[:199_950] + " so which answer is right?"
    assert len(prompt) > 199_000
    began = time.perf_counter()
    ids = smol.tokenize([prompt])[0]
    features = smol.encode([prompt, "short"])
    elapsed = time.perf_counter() - began
    assert len(ids) == smol.schema.max_tokens == 2048
    tokenizer = smol.prompt_tokenizer.tokenizer
    full = _template_ids(tokenizer, prompt)
    head = next(i for i, (a, b) in enumerate(zip(ids, full)) if a != b)
    assert ids[head:] == full[len(full) - (2048 - head) :]  # same tokens as tokenizing the whole prompt
    assert np.isfinite(features["L4_mean"]).all()
    assert elapsed < 30, f"{elapsed:.1f} s"


def test_bad_inputs_raise_user_errors(smol):
    with pytest.raises(UserError, match="no-such-encoder"):
        make_encoder("no-such-encoder", layers=[1])
    with pytest.raises(UserError, match="no such .gguf"):
        make_encoder("./missing/model.gguf", layers=[1])
    with pytest.raises(UserError, match=r"layer 31 is out of range .*0\.\.30"):
        make_encoder("smollm2-135m", layers=[4, 31])
    with pytest.raises(UserError, match="pooling"):
        make_encoder("smollm2-135m", layers=[1], poolings=["max"])
    with pytest.raises(UserError, match="dtype"):
        make_encoder("smollm2-135m", layers=[1], dtype="int8")
    with pytest.raises(UserError, match="max_tokens=10 is too small"):
        make_encoder("smollm2-135m", layers=[1], max_tokens=10)  # the template alone takes ~30 tokens
    with pytest.raises(UserError, match="row 1 is empty"):
        smol.encode(["fine", "   \n"])
    with pytest.raises(UserError, match="row 0 is empty"):
        smol.encode([""])
    with pytest.raises(UserError, match="row 2 is not text"):
        smol.encode(["a", "b", None])


def test_schema_identifies_what_changes_features(smol):
    schema = smol.schema
    assert schema.layers == (0, 2, 4) and schema.poolings == ("last", "mean")
    assert schema.dtype == "float32" and schema.chat_template and schema.template_hash
    assert schema.columns == ["L0_last", "L0_mean", "L2_last", "L2_mean", "L4_last", "L4_mean"]
    assert FeatureSchema.model_validate_json(schema.model_dump_json()) == schema
    with pytest.raises(pydantic.ValidationError):
        schema.max_tokens = 10  # frozen
    by_path = make_encoder(smol.source.location, layers=[4, 2, 0, 2], poolings=["mean", "last"]).schema
    assert by_path.encoder != schema.encoder and by_path.schema_id == schema.schema_id  # same weights
    assert schema.model_copy(update={"layers": (2, 4)}).schema_id != schema.schema_id
    config = EncoderConfig(encoder="smollm2-135m", layers=LAYERS, poolings=["last", "mean"])
    assert resolve_schema(config) == schema  # without loading the weights
    assert resolve_schema(config, device="cuda").dtype == "bfloat16"  # no GPU needed here
    assert schema.encoder_config() == config.model_copy(update={"dtype": "float32"})  # reproduces these features
    no_template = make_encoder("smollm2-135m", layers=LAYERS, poolings=["last", "mean"], chat_template=False)
    assert no_template.schema.schema_id != schema.schema_id and no_template.schema.template_hash is None


def test_converted_gguf_is_reused(smol):
    marker = smol.source.folder / "ray_router_source.json"
    before = marker.stat().st_mtime_ns, (smol.source.folder / "model.safetensors").stat().st_mtime_ns
    again = make_encoder("smollm2-135m", layers=[1])
    assert again.source.folder == smol.source.folder
    assert (marker.stat().st_mtime_ns, (smol.source.folder / "model.safetensors").stat().st_mtime_ns) == before


def test_minilm_alias_gives_mean_pooled_sentence_features():
    encoder = make_encoder("minilm-l6", layers=[6], poolings=["mean"])
    schema = encoder.schema
    assert not schema.chat_template and schema.max_tokens == 512 and schema.hidden_size == 384
    prompts = ["A cat sits on the mat.", "Stock markets fell sharply on Monday after the announcement."]
    features = encoder.encode(prompts)["L6_mean"]
    tokenizer = AutoTokenizer.from_pretrained(encoder.source.folder)
    model = AutoModel.from_pretrained(encoder.source.folder).eval()
    expected = []
    for prompt in prompts:  # one by one: no padding in the reference
        with torch.inference_mode():
            expected.append(model(**tokenizer(prompt, return_tensors="pt")).last_hidden_state[0].mean(0).numpy())
    np.testing.assert_allclose(features, np.stack(expected), atol=TOLERANCE)
    left = make_encoder("minilm-l6", layers=[6], poolings=["mean"], padding_side="left")  # absolute positions
    np.testing.assert_allclose(left.encode(prompts)["L6_mean"], features, atol=TOLERANCE)
    cosine = features @ features.T / np.outer(*(2 * [np.linalg.norm(features, axis=1)]))
    assert cosine[0, 1] < 0.9


def test_gemma_alias_is_assembled_from_its_packages_and_gives_the_plain_forward_features():
    encoder = make_encoder("gemma3-270m", layers=[0, 2, 18], poolings=["last", "mean"])
    schema = encoder.schema
    assert schema.weight_hash == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the GGUF
    assert schema.hidden_size == 640 and not schema.chat_template and schema.template_hash is None  # no template
    features = encoder.encode(PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(encoder.source.folder)
    model = AutoModelForCausalLM.from_pretrained(encoder.source.folder, dtype=torch.float32).eval()
    for row, prompt in enumerate(PROMPTS):  # one by one: no padding in the reference
        inputs = tokenizer(prompt, return_tensors="pt")
        assert encoder.tokenize([prompt])[0] == inputs["input_ids"][0].tolist()
        with torch.inference_mode():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        for layer in (0, 2, 18):
            for pooling, reference in (("last", hidden[layer][0, -1]), ("mean", hidden[layer][0].mean(0))):
                np.testing.assert_allclose(features[f"L{layer}_{pooling}"][row], reference.numpy(),
                                           atol=TOLERANCE * max(1.0, float(reference.abs().max())))
