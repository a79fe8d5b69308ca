"""Does the model listen? Full model vs a DMS-only and an audio-only baseline, per split, patient-grouped CIs.

Two confounds flatter raw AUROCs on SPRSound: test_intra shares its patients with train (a patient's own
adventitious rate in train predicts their test recordings with no audio at all), and age alone predicts the
label. So every split gets, side by side (patient-grouped bootstrap 95 % CIs):
- full model: `api.load_model()` + `Session(model, dms=...).score_file(path)`, the first 8.18-s window,
  exactly as `respi-edge predict` scores a file;
- DMS only: logistic regression on age, gender and position, fitted on the model's training patients;
- audio only: a linear probe (logistic regression on the mean and std of the 64 encoder tokens) fitted on the
  same patients, on the first-window tokens of the model's own (fine-tuned) encoder;
- on test_intra also the patient prior: each recording predicted by its patient's adventitious rate in train.
The headline split is the dev-test split (`configs/splits/sprsound2022_devtest.csv`): patients no training step
saw. The extended unseen set adds those patients' test_intra recordings.

    RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.listening --out bench/results/listening
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

LOCATIONS = ("p1", "p2", "p3", "p4")


def dms_features(rows) -> np.ndarray:
    """Age (years), gender, position one-hot: what the DMS text tells a model."""
    out = []
    for r in rows:
        age = float(r.dms.get("age", "nan"))
        g = r.dms.get("gender", "")
        loc = r.dms.get("location", "")
        out.append([age, float(g == "M"), float(g == "F"), *[float(loc == p) for p in LOCATIONS]])
    return np.array(out)


def token_features(tokens: np.ndarray) -> np.ndarray:
    return np.concatenate([tokens.mean(1), tokens.std(1)], axis=-1)


def probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))


def encoder_tokens(model, rows, recipe, progress=None, encoders=None) -> list[np.ndarray]:
    """First-window tokens of each of `encoders` (default: the model's own). Their frozen stages [0, cut) are the
    deterministic initialisation for every built-in model, so their outputs come from the recipe's training feature
    cache (view 0, fp16) when a training run left it, else they are computed, once per recording for all encoders;
    stages [cut, 4) run from each encoder itself."""
    import torch

    from respi_edge.runtime import audio as fe
    from respi_edge.train.encoder_finetune import feature_cache
    from respi_edge.train.encoder_stages import back, front

    cut = recipe.encoder_cut
    encoders = encoders or [model.encoder]
    cache = feature_cache(model, recipe)
    out: list[list[np.ndarray]] = [[] for _ in encoders]
    with torch.inference_mode():
        for r in rows:
            h = cache.cached(r, 0)
            if h is not None:
                h = h.float()[None]
            else:
                h = front(model.encoder, torch.from_numpy(fe.spectrogram(r.path))[None], cut)
            for toks, enc in zip(out, encoders):
                toks.append(back(enc, h, cut)[0].numpy())
            if progress:
                progress()
    return [np.stack(t) for t in out]


def full_model_scores(model, rows, progress=None) -> np.ndarray:
    from respi_edge.runtime import api
    from respi_edge.runtime.dms import dms_from_row

    sessions: dict[str, api.Session] = {}
    out = []
    for r in rows:
        dms = dms_from_row(r.dms)
        s = sessions.get(dms) or sessions.setdefault(dms, api.Session(model, dms=dms))
        out.append(s.score_file(r.path).prob)
        if progress:
            progress()
    return np.array(out)


def patient_prior(fit_rows, rows) -> np.ndarray:
    rate: dict[str, list[int]] = {}
    for r in fit_rows:
        rate.setdefault(r.patient, []).append(r.label)
    glob = float(np.mean([r.label for r in fit_rows]))
    return np.array([np.mean(rate[r.patient]) if r.patient in rate else glob for r in rows])


def devtest_args(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every dev-test bench shares: data folder, recipe, dev-test manifest, bootstrap, output."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("RESPI_EDGE_DATA", "../shared/data"),
                    help="folder holding sprsound2022/ (manifests, events.csv)")
    ap.add_argument("--recipe", default=str(files("respi_edge.configs") / "recipes" / "sprsound_demo.yaml"),
                    help="the recipe the model was trained with (its encoder cut and feature cache)")
    ap.add_argument("--holdout", default=str(files("respi_edge.configs") / "splits" / "sprsound2022_devtest.csv"))
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default=out)
    return ap


def main(argv: list[str] | None = None) -> dict:
    from respi_edge.runtime.progress import progress_bar

    from respi_edge.runtime import api
    from respi_edge.runtime.manifest import Manifest, read_manifest
    from respi_edge.runtime.stats import auroc_ci
    from respi_edge.train.recipe import load_recipe
    from respi_edge.train.splits import apply_holdout

    ap = devtest_args(__doc__, "bench/results/listening")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint (default: the built-in demo model)")
    args = ap.parse_args(argv)

    t0 = time.time()
    data = Path(args.data) / "sprsound2022"
    train = read_manifest(data / "train.csv")
    fit, dev = apply_holdout(train, args.holdout)
    intra = read_manifest(data / "test_intra.csv").rows
    dev_patients = {r.patient for r in dev}
    splits = {
        "devtest (unseen patients)": dev,
        "devtest + their test_intra recordings (unseen patients)": dev + [r for r in intra if r.patient in dev_patients],
        "test_intra (patients seen in training)": [r for r in intra if r.patient not in dev_patients],
        "test_intra (all)": intra,
    }
    model = api.load_model(args.checkpoint)
    wanted = {r.path: r for rows in splits.values() for r in rows}
    results: dict = {"model": model.info.name, "checkpoint": args.checkpoint or "built-in demo",
                     "caveats": list(model.info.caveats), "fit_recordings": len(fit),
                     "fit_patients": len({r.patient for r in fit}), "bootstrap": args.bootstrap, "splits": {}}
    with progress_bar() as progress:
        tid = progress.add_task("full model (predict path)", total=len(wanted))
        p_full = dict(zip(wanted, full_model_scores(model, list(wanted.values()),
                                                    lambda: progress.update(tid, advance=1))))
        everything = fit + [r for r in wanted.values() if r.path not in {f.path for f in fit}]
        tid = progress.add_task("encoder tokens (audio-only probe)", total=len(everything))
        toks, = encoder_tokens(model, everything, load_recipe(args.recipe),
                              progress=lambda: progress.update(tid, advance=1))
    feats = dict(zip([r.path for r in everything], token_features(toks)))
    y_fit = np.array([r.label for r in fit])
    dms_model = probe().fit(dms_features(fit), y_fit)
    audio_model = probe().fit(np.stack([feats[r.path] for r in fit]), y_fit)
    for name, rows in splits.items():
        y = np.array([r.label for r in rows])
        pats = [r.patient for r in rows]
        figs = {
            "full model": np.array([p_full[r.path] for r in rows]),
            "DMS only (age, gender, position)": dms_model.predict_proba(dms_features(rows))[:, 1],
            "audio only (linear probe on encoder tokens)": audio_model.predict_proba(
                np.stack([feats[r.path] for r in rows]))[:, 1],
        }
        if name.startswith("test_intra"):
            figs["patient prior (train rate, no audio)"] = patient_prior(fit, rows)
        results["splits"][name] = {
            "n": len(rows), "patients": len(set(pats)), "positives": int(y.sum()),
            "auroc": {k: auroc_ci(y, p, pats, n_boot=args.bootstrap).to_dict() for k, p in figs.items()}}
    results["seconds"] = time.time() - t0
    results["command"] = "RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.listening"
    return save(results, args.out, render)


def save(res: dict, out: str, render) -> dict:
    """Write `res` as `<out>.json` and its table as `<out>.md` (atomically, with the machine named); print it."""
    from respi_edge.runtime import atomic

    res.setdefault("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path.with_suffix(".json"), res)
    atomic.write_text(path.with_suffix(".md"), render(res))
    print(render(res))
    return res


def fmt_ci(ci: dict) -> str:
    lo, hi = ci["ci95"]
    return f"{ci['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def render(res: dict) -> str:
    cols = ["full model", "DMS only (age, gender, position)", "audio only (linear probe on encoder tokens)",
            "patient prior (train rate, no audio)"]
    lines = [f"# Does the model listen? ({res['model']})", "",
             f"Command: `{res['command']}`; {res['machine']}; {res['seconds']:.0f} s. Baselines fitted on the "
             f"model's {res['fit_recordings']} training recordings ({res['fit_patients']} patients, the dev-test "
             f"patients excluded). AUROC with patient-grouped bootstrap 95 % CIs ({res['bootstrap']} resamples).",
             "", "| split | recordings / patients / positives | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for name, s in res["splits"].items():
        cells = [fmt_ci(s["auroc"][c]) if c in s["auroc"] else "" for c in cols]
        lines.append(f"| {name} | {s['n']} / {s['patients']} / {s['positives']} | " + " | ".join(cells) + " |")
    lines += ["", "Screening aid, not a diagnosis."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
