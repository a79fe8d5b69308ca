"""RespLLM end to end against golden/respllm_tiny: token ids exact, logits within 1e-4, merged == unmerged."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import shared_path
from respi_edge.runtime import checkpoint as ckpt
from respi_edge.runtime.checkpoint import open_checkpoint
from respi_edge.runtime.errors import CheckpointError
from respi_edge.runtime.load import load_model

ATOL = 1e-4


@pytest.fixture(scope="session")
def tiny_manifest():
    return json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())


@pytest.fixture(scope="session")
def expected():
    return dict(np.load(shared_path("golden", "respllm_tiny", "expected.npz")))


@pytest.fixture(scope="session")
def model(tiny_ckpt, tiny_llm):
    return load_model(tiny_ckpt, tiny_llm)


@pytest.fixture(scope="session")
def merged(tiny_ckpt, tiny_llm):
    return load_model(tiny_ckpt, tiny_llm, merge_lora=True)


def cases(manifest):
    return [c["case"] for c in manifest["cases"]]


CASES = ["c1_S1_full", "c2_S7_full", "c3_T6_partial", "c4_composed_empty", "c5_S1_partial", "c6_S7_empty"]


def test_case_list_matches_golden(tiny_manifest):
    assert cases(tiny_manifest) == CASES


def test_hparams_from_shapes(tiny_ckpt, tiny_manifest):
    ck = open_checkpoint(tiny_ckpt)
    cfg = tiny_manifest["respllm_configs"]
    hp = ck.hparams
    assert (hp.d_llm, hp.enc_dim, hp.n_cls, hp.d_ff, hp.patch_nums) == (
        cfg["llm_dim"], cfg["enc_dim"], cfg["n_cls"], cfg["d_ff"], cfg["patch_nums"])
    assert hp.llm_mode == "lora" and hp.llm_lora_r == cfg["llm_lora_rank"]
    assert hp.llm_lora_targets == ["q_proj", "v_proj"]
    assert hp.enc_mode == "frozen" and hp.llm_layers == 2 and hp.llm_hidden == 64
    assert ck.epoch == tiny_manifest["checkpoint"]["epoch"]


def _case(manifest, name):
    return next(c for c in manifest["cases"] if c["case"] == name)


@pytest.mark.parametrize("name", CASES)
def test_token_ids_exact(model, tiny_manifest, expected, name):
    c = _case(tiny_manifest, name)
    p, d = model.tokenize(c["prompt"]), model.tokenize(c["dms"])
    assert p.dtype == torch.long and d.dtype == torch.long
    np.testing.assert_array_equal(p[0].numpy(), expected[f"{name}/prompt_ids"])
    np.testing.assert_array_equal(d[0].numpy(), expected[f"{name}/dms_ids"])
    assert p.shape[1] == c["n_prompt_tokens"] and d.shape[1] == c["n_dms_tokens"]


@pytest.mark.parametrize("name", CASES)
def test_logits_unmerged(model, tiny_manifest, expected, name):
    c = _case(tiny_manifest, name)
    logits = model.logits(torch.from_numpy(expected[f"{name}/spec"]), c["prompt"], c["dms"])[0]
    np.testing.assert_allclose(logits.numpy(), expected[f"{name}/logits"], atol=ATOL, rtol=0)
    prob1 = torch.softmax(logits, -1)[1].item()
    assert abs(prob1 - float(expected[f"{name}/prob1"][0])) < ATOL


@pytest.mark.parametrize("name", CASES)
def test_logits_merged(merged, model, tiny_manifest, expected, name):
    c = _case(tiny_manifest, name)
    spec = torch.from_numpy(expected[f"{name}/spec"])
    lm = merged.logits(spec, c["prompt"], c["dms"])[0]
    np.testing.assert_allclose(lm.numpy(), expected[f"{name}/logits_merged"], atol=ATOL, rtol=0)
    lu = model.logits(spec, c["prompt"], c["dms"])[0]
    assert (lm - lu).abs().max().item() < ATOL


def test_lora_is_applied(model, tiny_manifest, expected):
    """Ignoring the LoRA moves the logits by 0.19–0.54 (golden), so the check above cannot pass without it."""
    c = _case(tiny_manifest, "c1_S1_full")
    want = np.array(c["llm_lora_disabled_logits"], dtype=np.float32)
    with model.llm.disable_adapter():
        lo = model.logits(torch.from_numpy(expected["c1_S1_full/spec"]), c["prompt"], c["dms"])[0]
    np.testing.assert_allclose(lo.numpy(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["c1_S1_full", "c4_composed_empty"])
def test_prefix_reuse_equals_full_forward(model, tiny_manifest, expected, name):
    c = _case(tiny_manifest, name)
    spec = torch.from_numpy(expected[f"{name}/spec"])
    p, d = model.tokenize(c["prompt"]), model.tokenize(c["dms"])
    full = model.forward(spec, p, d)
    pre = model.prefix(p, d)
    for _ in range(2):  # the cache must be reusable: a second window gives the same answer
        cached = model.score(pre, model.embed_audio(spec))
        assert (cached - full).abs().max().item() <= 1e-5
    assert pre.cache.get_seq_length() == pre.length


def test_wrong_base_llm_is_refused(tiny_ckpt, tmp_path, tiny_llm):
    cfg = json.loads((tiny_llm / "config.json").read_text())
    cfg["hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / f).write_bytes((tiny_llm / f).read_bytes())
    with pytest.raises(CheckpointError, match="hidden size"):
        load_model(tiny_ckpt, tmp_path)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        open_checkpoint(bad)
    torch.save({"epoch": 1, "model_state_dict": {"foo": torch.zeros(2)}}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="aligner"):
        open_checkpoint(tmp_path / "y.pt")


def test_checkpoint_is_memory_mapped(tiny_ckpt):
    """Tensors are views of the mapped file, not RAM copies (what lets a 30 GB checkpoint load on 24 GB)."""
    ck = open_checkpoint(tiny_ckpt)
    ptr = ck.state[ckpt.ALIGNER_W].data_ptr()
    regions = [ln.split() for ln in open("/proc/self/maps") if ln.rstrip().endswith(str(tiny_ckpt))]
    assert regions, "the checkpoint file is not mapped"
    assert any(int(r[0].split("-")[0], 16) <= ptr < int(r[0].split("-")[1], 16) for r in regions)


def _transformers_pin() -> str:
    import tomllib

    from conftest import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["torch"]
    return next(d for d in deps if d.startswith("transformers"))


def test_installed_transformers_is_the_tested_cache_api():
    """Prefix reuse depends on transformers' cache API (`cache=`, `output.cache`, DynamicCache layers with
    keys/crop); it changed within 5.x (past_key_values deprecated in 5.25, removed in 5.40). Another version
    must fail here loudly, not make prefix reuse silently wrong."""
    import inspect

    import transformers
    from packaging.requirements import Requirement
    from transformers import DynamicCache, LlamaConfig, LlamaModel

    pin = Requirement(_transformers_pin())
    assert pin.specifier.contains(transformers.__version__), (
        f"transformers {transformers.__version__} is not the version respi-edge's prefix reuse is tested with "
        f"({pin}); run tests/test_model.py with it and widen the pin in pyproject.toml")
    from respi_edge.runtime.kv_cache import cache_kw, output_cache, with_cache

    assert cache_kw() in inspect.signature(LlamaModel.forward).parameters
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the argument name in use is not the deprecated one
        model = LlamaModel(cfg).eval()
        out = model(inputs_embeds=torch.randn(1, 5, 16), use_cache=True)
        cache = output_cache(out)
        model(inputs_embeds=torch.randn(1, 3, 16), use_cache=True, **with_cache(cache))
    assert isinstance(cache, DynamicCache) and len(cache.layers) == 2
    assert all(layer.keys.shape[-2] == 8 and callable(layer.crop) for layer in cache.layers)


def test_prefix_reuse_raises_no_deprecation_warning(model, tiny_manifest, expected, caplog):
    """The cache is passed the way the installed transformers wants it: no warning (Python or transformers'
    logger), and the answer is still the full forward's."""
    import logging
    import warnings

    c = _case(tiny_manifest, "c2_S7_full")
    spec = torch.from_numpy(expected["c2_S7_full/spec"])
    p, d = model.tokenize(c["prompt"]), model.tokenize(c["dms"])
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        pre = model.prefix(p, d)
        cached = model.score(pre, model.embed_audio(spec))
        full = model.forward(spec, p, d)
    assert not [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert (cached - full).abs().max().item() <= 1e-5
    assert pre.cache.get_seq_length() == pre.length  # cut back after the window


def test_a_cache_without_layers_fails_loudly():
    from respi_edge.runtime.errors import ModelError
    from respi_edge.runtime.model import rewind

    with pytest.raises(ModelError, match="cache API"):
        rewind(object(), 3)
