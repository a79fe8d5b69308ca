"""`respi-edge train`: recipe → (fine-tuned encoder) → cached tokens → LLM training → metrics → checkpoints.

Everything written is atomic; cached features, tokens and a tuned encoder are reused by a re-run.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from respi_edge.runtime.builtin import encoder_init
from respi_edge.runtime.stats import auroc_ci, sens_spec, youden_threshold

from . import precision
from .recipe import Recipe, load_recipe
from .token_cache import TokenCache
from .trainer import (TaskSet, batch_logits, build_model, cached_tokens, collate, predict_examples, prepare,
                      seed_everything, task_rows, train)
from .writer import write_compact, write_official


def _precision_probe(model, s: TaskSet, batch_size: int):
    """One real training step (forward + backward, no update) on the first training batch."""
    batch = s.train[:batch_size]

    def step(bf16: bool) -> None:
        dms, tok, y = collate([e for e in batch if len(e.dms_ids) == len(batch[0].dms_ids)])
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(batch_logits(model, s.prompt_ids, dms, tok, bf16=bf16), y).backward()
        model.zero_grad(set_to_none=True)

    return step


def _scores(model, s: TaskSet, examples, threshold: float) -> dict:
    if not examples:
        return {}
    p, _ = predict_examples(model, s.prompt_ids, examples)
    y = np.array([e.label for e in examples])
    out = {"n": len(examples), "patients": len({e.patient for e in examples})}
    if len(set(y.tolist())) == 2:
        sens, spec = sens_spec(y, p, threshold)
        out.update(auroc=auroc_ci(y, p, [e.patient for e in examples]).to_dict(), sensitivity=sens,
                   specificity=spec)
    return out


def run(config: str, overrides: list[str], out: str, *, official: bool = False, llm: str | None = None,
        cache_dir: str | None = None, progress=None) -> dict:
    recipe: Recipe = load_recipe(config, overrides)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = build_model(recipe, llm)
    rows = task_rows(recipe)
    encoder_meta: dict = {"mode": recipe.encoder_mode}
    token_cache = None
    if recipe.encoder_mode == "finetune":
        from .encoder_finetune import finetune_encoder

        tokens, tuned = finetune_encoder(model, recipe, rows, outp, cache_dir, progress)
        encoder_meta.update(tuned)
    else:
        token_cache = TokenCache(model.encoder, encoder_init()["sha256"], cache_dir)
        tokens = cached_tokens(token_cache)
    t_encoder = time.time() - t0
    sets = prepare(model, recipe, rows, tokens, progress)
    t_tokens = time.time() - t0
    prec = precision.choose(recipe.precision, _precision_probe(model, sets[0], min(4, recipe.batch_size)))
    if progress:
        progress.console.print(f"precision: {prec['precision']} ({prec['why']})")
    seed_everything(recipe.seed)
    hist = train(model, sets, recipe, progress, bf16=prec["precision"] == "bf16")

    metrics: dict = {"recipe": recipe.to_dict(), "history": hist.epochs, "best_epoch": hist.best_epoch,
                     "stopped_early": hist.stopped_early, "precision": prec, "encoder": encoder_meta,
                     "seconds_encoder": t_encoder, "seconds_tokens": t_tokens, "seconds_train": hist.seconds,
                     "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
                     "tasks": {}}
    if token_cache is not None:
        metrics["token_cache"] = {"hits": token_cache.hits, "misses": token_cache.misses}
    threshold = 0.5
    for s in sets:
        pv, _ = predict_examples(model, s.prompt_ids, s.val)
        yv = [e.label for e in s.val]
        if len(set(yv)) == 2:
            threshold = youden_threshold(yv, pv)
        tm: dict = {"n_train": len(s.train), "n_val": len(s.val), "threshold_youden_val": threshold}
        te = _scores(model, s, s.test, threshold)
        if te:  # flat keys kept for readers of earlier metrics files
            tm.update({"test_n": te["n"], "test_patients": te["patients"]})
            if "auroc" in te:
                tm.update({"test_auroc": te["auroc"], "test_sensitivity": te["sensitivity"],
                           "test_specificity": te["specificity"]})
        if s.holdout:
            tm["holdout"] = _scores(model, s, s.holdout, threshold)
        metrics["tasks"][s.task] = tm
    metrics["seconds_total"] = time.time() - t0

    meta = {"epoch": hist.best_epoch, "name": recipe.name, "task": recipe.tasks[0].task, "threshold": threshold,
            "base_llm": recipe.base_llm if llm is None else str(llm),
            "hparams": {"llm_lora_alpha": recipe.lora_alpha, "enc_lora_alpha": 32, "d_ff": recipe.d_ff},
            "caveats": list(model.info.caveats), "recipe": recipe.to_dict(), "precision": prec["precision"],
            "encoder_trained": encoder_meta.get("trained", []),
            "metrics": {k: {kk: vv for kk, vv in v.items()} for k, v in metrics["tasks"].items()}}
    write_compact(model, outp / "model.safetensors", meta, encoder_meta.get("trained"))
    if official:
        write_official(model, outp / "official.pt", max(hist.best_epoch - 1, 0))
    tmp = outp / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, outp / "metrics.json")
    return metrics
