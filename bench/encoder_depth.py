"""Does tuning more of the encoder help unseen patients? The recipe's encoder stage at another cut, probed on dev-test.

The demo tunes stage 4 + the final norm (cut 3, 14.2 M parameters) on cached stage-1–3 features. Issue 13 names
stages 3–4 (cut 2, 26.0 M) as the larger option. This runs the recipe's own encoder stage (`finetune_encoder`:
same views, cache, augmentation, validation split and epoch rule) at `--cut`, then scores the tuned encoder the
way `bench/listening.py` scores the demo's: a linear probe on the first-window tokens, fitted on the 194 training
patients, AUROC on the dev-test patients with patient-grouped CIs. Nothing here is shipped: stages 3–4 in fp16
(52 MB) would not fit the demo's 40 MB budget, so the question is only whether they would listen better.

    RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.encoder_depth --cut 2 --out bench/results/encoder_depth
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .listening import fmt_ci, probe, save, token_features


def main(argv: list[str] | None = None) -> dict:
    import torch

    from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
    from respi_edge.runtime.encoder import load_encoder
    from respi_edge.runtime.progress import progress_bar
    from respi_edge.runtime.stats import auroc_ci
    from respi_edge.train.encoder_finetune import finetune_encoder
    from respi_edge.train.encoder_stages import trainable_modules
    from respi_edge.train.recipe import load_recipe
    from respi_edge.train.trainer import seed_everything, task_rows

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(files("respi_edge.configs") / "recipes" / "sprsound_demo.yaml"))
    ap.add_argument("--cut", type=int, default=2, help="stages [0, cut) stay the initialisation (demo: 3)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="further recipe overrides")
    ap.add_argument("--work", default="out/encoder_depth", help="where the tuned encoder is kept (resumable)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/encoder_depth")
    args = ap.parse_args(argv)

    t0 = time.time()
    overrides = [f"encoder_cut={args.cut}", *args.set]
    recipe = load_recipe(args.recipe, overrides)
    seed_everything(recipe.seed)
    rows = task_rows(recipe)
    model = SimpleNamespace(encoder=load_encoder(synthetic_encoder_state(encoder_init())))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with progress_bar() as progress:
        tokens, meta = finetune_encoder(model, recipe, rows, work, None, progress)
        fit = [r for tr in rows for r in tr.train + tr.val]
        dev = [r for tr in rows for r in tr.holdout]
        tid = progress.add_task("first-window tokens", total=len(fit) + len(dev))
        feats = []
        for r in fit + dev:
            feats.append(token_features(tokens(r, False)[0][None].numpy())[0])
            progress.update(tid, advance=1)
    x = np.stack(feats)
    y_fit = np.array([r.label for r in fit])
    y_dev = np.array([r.label for r in dev])
    p = probe().fit(x[:len(fit)], y_fit).predict_proba(x[len(fit):])[:, 1]
    ci = auroc_ci(y_dev, p, [r.patient for r in dev], n_boot=args.bootstrap)
    n_trained = sum(t.numel() for m in trainable_modules(model.encoder, args.cut) for t in m.parameters())
    res = {"cut": args.cut, "overrides": overrides, "trained_parameters": n_trained,
           "encoder": {k: meta[k] for k in ("history", "best_epoch", "seconds") if k in meta},
           "fit_recordings": len(fit), "devtest_recordings": len(dev),
           "devtest_patients": len({r.patient for r in dev}),
           "devtest_probe_auroc": ci.to_dict(), "bootstrap": args.bootstrap, "seconds": time.time() - t0,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"torch {torch.__version__}",
           "command": f"RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.encoder_depth --cut {args.cut}"
                      + "".join(f" --set {s}" for s in args.set)}
    return save(res, args.out, render)


def render(res: dict) -> str:
    enc = res["encoder"]
    curve = ", ".join(f"{e['val_auroc']:.3f}" for e in enc.get("history", []) if "val_auroc" in e)
    ci = res["devtest_probe_auroc"]
    return "\n".join([
        f"# Encoder stages [{res['cut']}, 4) tuned: does it listen better on unseen patients?", "",
        f"Command: `{res['command']}`; {res['machine']}; {res['seconds']:.0f} s in all "
        f"(encoder stage {enc.get('seconds', 0):.0f} s).", "",
        f"- Tuned: stages {res['cut'] + 1}–4 + final norm ({res['trained_parameters'] / 1e6:.1f} M parameters), "
        f"recipe overrides {', '.join(res['overrides'])}.",
        f"- Validation AUROC per epoch (pooled classifier, view 0): {curve}; kept epoch {enc.get('best_epoch')}.",
        f"- Dev-test ({res['devtest_recordings']} recordings, {res['devtest_patients']} patients), linear probe on "
        f"the tuned first-window tokens fitted on {res['fit_recordings']} training recordings: AUROC "
        f"**{fmt_ci(ci)}** (patient-grouped bootstrap, "
        f"{res['bootstrap']} resamples).", "",
        "Screening aid, not a diagnosis.", ""])


if __name__ == "__main__":
    main()
