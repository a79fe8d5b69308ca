"""`respi-edge train`: recipe → cached tokens → training → test metrics → checkpoints, written atomically."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from respi_edge.runtime.stats import auroc_ci, sens_spec, youden_threshold
from respi_edge.runtime.builtin import encoder_init

from .recipe import Recipe, load_recipe
from .token_cache import TokenCache
from .trainer import build_model, predict_examples, prepare, seed_everything, train
from .writer import write_compact, write_official


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
    cache = TokenCache(model.encoder, encoder_init()["sha256"], cache_dir)
    sets = prepare(model, recipe, cache, progress)
    t_tokens = time.time() - t0
    seed_everything(recipe.seed)
    hist = train(model, sets, recipe, progress)

    metrics: dict = {"recipe": recipe.to_dict(), "history": hist.epochs, "best_epoch": hist.best_epoch,
                     "stopped_early": hist.stopped_early, "seconds_tokens": t_tokens, "seconds_train": hist.seconds,
                     "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
                     "token_cache": {"hits": cache.hits, "misses": cache.misses}, "tasks": {}}
    threshold = 0.5
    for s in sets:
        pv, _ = predict_examples(model, s.prompt_ids, s.val)
        yv = [e.label for e in s.val]
        if len(set(yv)) == 2:
            threshold = youden_threshold(yv, pv)
        tm: dict = {"n_train": len(s.train), "n_val": len(s.val), "threshold_youden_val": threshold}
        if s.test:
            pt, _ = predict_examples(model, s.prompt_ids, s.test)
            yt = np.array([e.label for e in s.test])
            if len(set(yt.tolist())) == 2:
                ci = auroc_ci(yt, pt, [e.patient for e in s.test])
                sens, spec = sens_spec(yt, pt, threshold)
                tm.update({"test_n": len(s.test), "test_patients": len({e.patient for e in s.test}),
                           "test_auroc": ci.to_dict(), "test_sensitivity": sens, "test_specificity": spec})
        metrics["tasks"][s.task] = tm

    meta = {"epoch": hist.best_epoch, "name": recipe.name, "task": recipe.tasks[0].task, "threshold": threshold,
            "base_llm": recipe.base_llm if llm is None else str(llm),
            "hparams": {"llm_lora_alpha": recipe.lora_alpha, "enc_lora_alpha": 32, "d_ff": recipe.d_ff},
            "caveats": list(model.info.caveats), "recipe": recipe.to_dict(),
            "metrics": {k: {kk: vv for kk, vv in v.items()} for k, v in metrics["tasks"].items()}}
    write_compact(model, outp / "model.safetensors", meta)
    if official:
        write_official(model, outp / "official.pt", max(hist.best_epoch - 1, 0))
    tmp = outp / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, outp / "metrics.json")
    return metrics
