"""Training on real SPRSound recordings with a tiny LLM: formats, round trips, reproducibility, token cache."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors import safe_open

from conftest import shared_path
from respi_edge.runtime.checkpoint import open_checkpoint
from respi_edge.runtime.load import load_model
from respi_edge.train.recipe import RecipeError, load_recipe
from respi_edge.train.run import run
from respi_edge.train.trainer import batch_logits

N_PATIENTS = 8


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The golden tiny Llama config with seeded random base weights, saved as a normal HF folder."""
    from transformers import AutoConfig, AutoModel

    src = shared_path("golden", "respllm_tiny", "llm")
    d = tmp_path_factory.mktemp("tinybase")
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, d / f)
    return d


@pytest.fixture(scope="module")
def small_manifests(tmp_path_factory):
    """Train/test manifests over a few real SPRSound patients (both labels)."""
    data = shared_path("data", "sprsound2022")
    d = tmp_path_factory.mktemp("manifests")
    rows = list(csv.DictReader(open(data / "train.csv")))
    pos = [r for r in rows if r["label"] == "1"]
    neg = [r for r in rows if r["label"] == "0"]
    pick, seen = [], set()
    for r in pos + neg:
        if len(seen) >= N_PATIENTS and r["patient"] not in seen:
            continue
        if sum(x["patient"] == r["patient"] for x in pick) < 2:
            seen.add(r["patient"])
            pick.append(r)
    for name, part in (("train.csv", pick), ("test.csv", pick[:6] + pick[-6:])):
        with open(d / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            for r in part:
                w.writerow({**r, "path": str(data / r["path"])})
    recipe = d / "recipe.yaml"
    recipe.write_text(f"""name: tiny test
tasks:
  - task: sprsound_normal_vs_adventitious
    train: {d / 'train.csv'}
    test: {d / 'test.csv'}
epochs: 2
batch_size: 4
lr: 0.001
val_fraction: 0.25
precision: fp32
""")
    return recipe


@pytest.fixture(scope="module")
def trained(small_manifests, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    metrics = run(str(small_manifests), [], str(out), official=True, llm=str(tiny_base), cache_dir=str(cache))
    return out, metrics, cache


def test_metrics_and_files(trained):
    out, metrics, _ = trained
    assert (out / "model.safetensors").is_file() and (out / "official.pt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["best_epoch"] >= 1 and len(m["history"]) >= 1
    t = m["tasks"]["sprsound_normal_vs_adventitious"]
    assert 0 <= t["test_auroc"]["value"] <= 1 and t["test_auroc"]["ci95"][0] <= t["test_auroc"]["value"]


def test_compact_form_holds_only_trained_tensors(trained):
    out, _, _ = trained
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["respi_edge"])
    assert {"aligner.weight", "aligner.bias", "output_projection.linear.weight", "output_projection.linear.bias"} <= keys
    lora = [k for k in keys if ".lora_" in k]
    assert len(lora) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(k.startswith("llm_model.base_model.model.layers.") for k in lora)
    assert len(keys) == len(lora) + 4
    assert meta["format"] == "respi-edge-compact/1" and meta["task"] == "sprsound_normal_vs_adventitious"
    assert meta["encoder_init"]["sha256"]


def test_official_checkpoint_has_the_reference_layout(trained):
    """Same tiny LLM config as golden/respllm_tiny, so the key list must be the reference's, in order."""
    out, _, _ = trained
    golden = json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())["layout"]
    sd = torch.load(out / "official.pt", weights_only=True, mmap=True)
    assert set(sd) == {"epoch", "model_state_dict"}
    assert list(sd["model_state_dict"]) == [e["key"] for e in golden]
    for e in golden:
        assert list(sd["model_state_dict"][e["key"]].shape) == e["shape"]


def test_round_trips_give_the_trained_logits(trained, tiny_base):
    out, _, _ = trained
    spec = torch.from_numpy(__import__("numpy").load(shared_path("golden", "mel", "a3_lung_8k_mono_int16.npz"))["spec"])
    m_off = load_model(out / "official.pt", tiny_base)
    m_cmp = load_model(out / "model.safetensors", tiny_base)
    assert m_cmp.info.task == "sprsound_normal_vs_adventitious"
    prompt = "<|start_prompt|>x<|<end_prompt>|>"
    dms = "Gender: F. Age: 9.7. Record location: left posterior chest."
    a, b = m_off.logits(spec, prompt, dms), m_cmp.logits(spec, prompt, dms)
    assert (a - b).abs().max().item() < 1e-5
    # the training forward (batched, prompt keys/values shared) equals the reference forward per sample
    p, d = m_cmp.tokenize(prompt), m_cmp.tokenize(dms)
    tokens = m_cmp.audio_tokens(spec[None])
    with torch.no_grad():
        bl = batch_logits(m_cmp, p, d.expand(2, -1), tokens.expand(2, -1, -1))
    assert (bl - b).abs().max().item() < 1e-5


def test_same_seed_same_model_and_cache_reuse(trained, small_manifests, tiny_base, tmp_path):
    out, _, cache = trained
    metrics = run(str(small_manifests), [], str(tmp_path), llm=str(tiny_base), cache_dir=str(cache))
    assert metrics["token_cache"]["misses"] == 0 and metrics["token_cache"]["hits"] > 0
    a, b = open_checkpoint(out / "model.safetensors").state, open_checkpoint(tmp_path / "model.safetensors").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_errors(tmp_path, small_manifests):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="bad override"):
        load_recipe(small_manifests, ["learning_rate=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: []\nfoo: 1\n")
    with pytest.raises(RecipeError, match="unknown recipe keys"):
        load_recipe(bad)
    assert load_recipe(small_manifests, ["epochs=7", "precision=bf16"]).epochs == 7


def test_shipped_demo_recipe_parses():
    from importlib.resources import files

    r = load_recipe(str(files("respi_edge.configs") / "recipes" / "sprsound_demo.yaml"))
    assert r.tasks[0].task == "sprsound_normal_vs_adventitious" and r.base_llm == "smollm2-135m-instruct"


def test_stopper_keeps_the_epoch_its_rule_names():
    """The shipped demo's own LLM history (metrics.json): loss keeps epoch 3, AUROC would keep epoch 5."""
    from respi_edge.train.trainer import Stopper

    loss = [1.3033, 0.8655, 0.5784, 0.7960, 0.5956]
    auc = [0.674, 0.743, 0.749, 0.757, 0.812]

    def replay(select, patience, losses, aucs):
        s, best, stopped = Stopper(select, patience, 0.005), 0, None
        for i, (l, a) in enumerate(zip(losses, aucs), 1):
            new, stop = s.step(l, a)
            best = i if new else best
            if stop:
                stopped = i
                break
        return best, stopped

    assert replay("loss", 2, loss, auc) == (3, 5)  # 0.796 and 0.596 both above 0.578 + 0.005: stopped, as recorded
    assert replay("auroc", 2, loss, auc) == (5, None)  # still rising at the last epoch
    assert replay("auroc", 2, loss, [0.6, 0.7, 0.65, 0.69, 0.71]) == (2, 4)  # two epochs without a new best
    assert replay("auroc", 2, loss, [None] * 5) == (3, 5)  # no AUROC (one class in validation): the loss decides


def test_select_must_be_a_known_rule(small_manifests):
    assert load_recipe(small_manifests, ["select=auroc"]).select == "auroc"
    with pytest.raises(RecipeError, match="select must be loss or auroc"):
        load_recipe(small_manifests, ["select=accuracy"])


def test_dms_dropout_empties_the_dms_of_training_batches_only(trained, small_manifests, tiny_base, tmp_path,
                                                              monkeypatch):
    """dms_dropout 1: every training batch without its DMS, validation and test still with theirs; 0: all with."""
    import respi_edge.train.trainer as T

    _, _, cache = trained
    seen = {"train": [], "eval": []}
    real = T.batch_logits

    def spy(model, prompt_ids, dms_ids, tokens, bf16=False):
        seen["train" if torch.is_grad_enabled() else "eval"].append(dms_ids.shape[1])
        return real(model, prompt_ids, dms_ids, tokens, bf16=bf16)

    monkeypatch.setattr(T, "batch_logits", spy)
    run(str(small_manifests), ["dms_dropout=1.0", "epochs=1"], str(tmp_path / "a"), llm=str(tiny_base),
        cache_dir=str(cache))
    assert seen["train"] and set(seen["train"]) == {0} and min(seen["eval"]) > 0
    seen["train"].clear()
    run(str(small_manifests), ["epochs=1"], str(tmp_path / "b"), llm=str(tiny_base), cache_dir=str(cache))
    assert seen["train"] and min(seen["train"]) > 0
    with pytest.raises(RecipeError, match="dms_dropout must be between 0 and 1"):
        load_recipe(small_manifests, ["dms_dropout=1.5"])
