"""What limits the demo on unseen patients? Three measurements on the dev-test split, patient-grouped CIs.

Issue 13 asks, where a target is missed, for what limits it, measured. `bench/listening.py` gives the figures;
this bench asks three questions of the same split (dev-test: patients no training step saw), every probe the
same logistic regression on the same 194 training patients (dev-test excluded):
1. *Does the trained encoder help?* The same linear probe on three inputs of the scored window: the front end's
   log-mel alone (per-band mean and std, no encoder), the tokens of the untrained deterministic encoder, and the
   tokens of the demo's fine-tuned encoder.
2. *Is there more to learn from more patients?* The probe on the tuned tokens (and on the log-mel) fitted on a
   random quarter, half, three quarters and all of the training patients (5 draws each): a still-rising curve
   says data, a flat one says representation.
3. *Does the scored window hold what the label says?* `predict` scores the first 8.18-s window (the reference's
   file semantics), but a record label covers the whole 9.2/15.4-s file. `events.csv` says where the adventitious
   events are; the full model and the probes are scored on the positives whose scored window overlaps an
   annotated adventitious event, and on those whose window does not (each against all negatives).

    RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.listening_limits --out bench/results/listening_limits
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .listening import devtest_args, encoder_tokens, fmt_ci, full_model_scores, probe, save, token_features

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def mel_features(spec: np.ndarray) -> np.ndarray:
    """Per-mel-band mean and std over time of a (256, 64) model input: what a probe reads without an encoder."""
    return np.concatenate([spec.mean(0), spec.std(0)])


def scored_window(path: str) -> tuple[float, float]:
    """Start and end (s, file time) of the window `predict` scores: 8.18 s from the first non-silent frame."""
    from respi_edge.runtime import audio as fe
    from respi_edge.runtime import contract as C

    start = fe.read_first_window_source(path).trim[0] / C.SAMPLE_RATE
    return start, start + C.WINDOW_SAMPLES / C.SAMPLE_RATE


def window_holds_event(path: str, events) -> bool:
    lo, hi = scored_window(path)
    return any(e.adventitious and e.end_s > lo and e.start_s < hi for e in events)


def learning_curve(x_fit, y_fit, fit_patients, x_dev, y_dev, draws: int = 5, seed: int = 0) -> list[dict]:
    """Dev-test AUROC of the probe fitted on random patient subsets (mean, min, max over `draws`)."""
    from respi_edge.runtime.stats import auroc

    rng = np.random.default_rng(seed)
    pats = np.array(sorted(set(fit_patients)))
    fp = np.array(fit_patients)
    out = []
    for frac in FRACTIONS:
        vals = []
        for _ in range(1 if frac == 1.0 else draws):
            m = np.isin(fp, rng.choice(pats, size=max(2, round(frac * len(pats))), replace=False))
            if len(set(y_fit[m])) < 2:
                continue
            vals.append(auroc(y_dev, probe().fit(x_fit[m], y_fit[m]).predict_proba(x_dev)[:, 1]))
        out.append({"fraction": frac, "patients": round(frac * len(pats)), "draws": len(vals),
                    "mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))})
    return out


def main(argv: list[str] | None = None) -> dict:
    from respi_edge.runtime import api
    from respi_edge.runtime import audio as fe
    from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
    from respi_edge.runtime.encoder import load_encoder
    from respi_edge.runtime.manifest import read_manifest
    from respi_edge.runtime.progress import progress_bar
    from respi_edge.runtime.stats import auroc_ci
    from respi_edge.train.recipe import load_recipe
    from respi_edge.train.splits import apply_holdout
    from respi_edge.train.views import read_events

    args = devtest_args(__doc__, "bench/results/listening_limits").parse_args(argv)

    t0 = time.time()
    data = Path(args.data) / "sprsound2022"
    fit, dev = apply_holdout(read_manifest(data / "train.csv"), args.holdout)
    events = read_events(data / "events.csv")
    recipe = load_recipe(args.recipe)
    model = api.load_model()
    untrained = load_encoder(synthetic_encoder_state(encoder_init()))
    rows = fit + dev
    with progress_bar() as progress:
        tid = progress.add_task("log-mel inputs", total=len(rows))
        mel = []
        for r in rows:
            mel.append(mel_features(fe.spectrogram(r.path)))
            progress.update(tid, advance=1)
        mel = np.stack(mel)
        tid = progress.add_task("untrained and tuned encoder tokens", total=len(rows))
        raw, tuned = (token_features(t) for t in encoder_tokens(
            model, rows, recipe, lambda: progress.update(tid, advance=1), [untrained, model.encoder]))
        tid = progress.add_task("full model on dev-test (predict path)", total=len(dev))
        p_full = full_model_scores(model, dev, lambda: progress.update(tid, advance=1))
    n = len(fit)
    y_fit = np.array([r.label for r in fit])
    y_dev = np.array([r.label for r in dev])
    pats = [r.patient for r in dev]
    inputs = {"log-mel statistics (no encoder)": mel, "untrained encoder tokens": raw,
              "fine-tuned encoder tokens (the demo's)": tuned}
    probs = {k: probe().fit(x[:n], y_fit).predict_proba(x[n:])[:, 1] for k, x in inputs.items()}
    res: dict = {"fit_recordings": n, "fit_patients": len({r.patient for r in fit}), "devtest_recordings": len(dev),
                 "devtest_patients": len(set(pats)), "devtest_positives": int(y_dev.sum()),
                 "bootstrap": args.bootstrap}
    scored = {"full model": p_full, **probs}

    def cis(idx: np.ndarray) -> dict:
        return {k: auroc_ci(y_dev[idx], p[idx], [pats[i] for i in idx], n_boot=args.bootstrap).to_dict()
                for k, p in scored.items()}

    everything = cis(np.arange(len(dev)))
    res["probes"] = {k: everything[k] for k in probs}
    res["learning_curve"] = {k: learning_curve(inputs[k][:n], y_fit, [r.patient for r in fit], inputs[k][n:], y_dev)
                             for k in ("log-mel statistics (no encoder)", "fine-tuned encoder tokens (the demo's)")}
    holds = np.array([r.label == 1 and window_holds_event(r.path, events.get(r.path, [])) for r in dev])
    pos, neg = y_dev == 1, y_dev == 0
    res["window"] = {"positives": int(pos.sum()), "with_event_in_window": int(holds.sum()),
                     "events_annotated": sum(bool(events.get(r.path)) for r in dev)}
    for name, keep in (("positives with an event in the scored window", holds | neg),
                       ("positives without one", (pos & ~holds) | neg)):
        idx = np.flatnonzero(keep)
        res["window"][name] = {"n": len(idx), "positives": int(y_dev[idx].sum()), "auroc": cis(idx)}
    res["window"]["all"] = {"n": len(dev), "positives": int(pos.sum()), "auroc": everything}
    res["seconds"] = time.time() - t0
    res["command"] = "RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.listening_limits"
    return save(res, args.out, render)


def render(res: dict) -> str:
    lines = ["# What limits the demo on unseen patients (dev-test)", "",
             f"Command: `{res['command']}`; {res['machine']}; {res['seconds']:.0f} s. Dev-test: "
             f"{res['devtest_recordings']} recordings, {res['devtest_patients']} patients, {res['devtest_positives']} "
             f"positive. Every probe: logistic regression (standardised, C 0.1) fitted on {res['fit_recordings']} "
             f"recordings of {res['fit_patients']} training patients. AUROC with patient-grouped bootstrap 95 % CIs "
             f"({res['bootstrap']} resamples).", "",
             "## 1. The same linear probe on three inputs of the scored window", "",
             "| probe input | dev-test AUROC |", "|---|---|"]
    lines += [f"| {k} | {fmt_ci(v)} |" for k, v in res["probes"].items()]
    lines += ["", "## 2. Learning curve: the probe fitted on a share of the training patients", "",
              "| probe input | " + " | ".join(f"{int(f * 100)} % of patients" for f in FRACTIONS) + " |",
              "|---|" + "---|" * len(FRACTIONS)]
    for k, curve in res["learning_curve"].items():
        lines.append(f"| {k} | " + " | ".join(
            f"{c['mean']:.3f}" + (f" ({c['min']:.3f}–{c['max']:.3f}, {c['draws']} draws)" if c["draws"] > 1 else "")
            for c in curve) + " |")
    w = res["window"]
    cols = list(w["all"]["auroc"])
    lines += ["", "## 3. Does the scored window hold the adventitious sound?", "",
              f"{w['with_event_in_window']} of the {w['positives']} positive dev-test recordings have an annotated "
              "adventitious event overlapping the first 8.18-s window (`predict`'s input); each row scores the "
              "positives named against all negatives.", "",
              "| positives | recordings / positives | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name in ("all", "positives with an event in the scored window", "positives without one"):
        s = w[name]
        cells = [fmt_ci(s["auroc"][c]) if s["positives"] else "– (no positives)" for c in cols]
        lines.append(f"| {name} | {s['n']} / {s['positives']} | " + " | ".join(cells) + " |")
    lines += ["", "Screening aid, not a diagnosis."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
