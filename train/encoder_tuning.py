"""Supervised fine-tuning of OPERA-CT's late stages on cached early-stage features (the demo's listening part).

No pretrained OPERA-CT weights are reachable offline, so the encoder learns from the labelled recordings
themselves: the stages after `cut` and the final norm train against a temporary pooled linear classifier
(mean + max over the 64 tokens), with augmented views (cached crops + SpecAugment), mixup of features,
stochastic depth, class-weighted loss, cosine learning rate, and the best epoch kept by validation AUROC on
view 0 (the scoring input). The classifier is discarded: the LLM, its LoRA and the RespLLM head are trained
afterwards on the tuned encoder's tokens.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .encoder_stages import back, trainable_modules
from .step import optimizer_step, show_loss


@dataclass
class FeatureItem:
    views: list[torch.Tensor]  # cached front features per view, (L, C) fp16; view 0 = the scoring input
    label: int
    patient: str


@dataclass
class TuningConfig:
    cut: int = 3
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    mixup: float = 0.5  # share of batches mixed (Beta(0.4, 0.4))
    drop_path: float = 0.1
    patience: int = 5
    seed: int = 42


@dataclass
class TuningHistory:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


class PooledClassifier(nn.Module):
    """Mean and max over tokens → linear: the temporary objective that shapes the tokens."""

    def __init__(self, dim: int = 768, n_cls: int = 2):
        super().__init__()
        self.linear = nn.Linear(2 * dim, n_cls)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1))


def _set_drop_path(modules: list[nn.Module], rate: float) -> None:
    from transformers.models.clap.modeling_clap import ClapDropPath

    for m in modules:
        for block in getattr(m, "blocks", []):
            block.drop_path = ClapDropPath(rate) if rate > 0 else nn.Identity()


@torch.no_grad()
def predict(encoder: nn.Module, clf: nn.Module, items: list[FeatureItem], cut: int, view: int = 0,
            batch: int = 64) -> np.ndarray:
    out = []
    for k in range(0, len(items), batch):
        h = torch.stack([it.views[view] for it in items[k:k + batch]]).float()
        out.append(torch.softmax(clf(back(encoder, h, cut)), -1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def tune(encoder: nn.Module, train: list[FeatureItem], val: list[FeatureItem], cfg: TuningConfig,
         progress=None) -> TuningHistory:
    """Train stages [cut, 4) + norm in place; returns the history; the encoder ends in eval mode, best epoch."""
    from sklearn.metrics import roc_auc_score

    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    modules = trainable_modules(encoder, cfg.cut)
    for p in encoder.parameters():
        p.requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    clf = PooledClassifier(encoder.config.hidden_size if hasattr(encoder, "config") else 768)
    opt = torch.optim.AdamW(params + list(clf.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    labels = np.array([it.label for it in train])
    weights = torch.tensor([len(labels) / (2 * max(1, (labels == c).sum())) for c in (0, 1)], dtype=torch.float32)
    yv = [it.label for it in val]
    hist, best_auc, bad, best_state = TuningHistory(), -1.0, 0, None
    t0 = time.time()
    for epoch in range(cfg.epochs):
        encoder.train()
        _set_drop_path(modules, cfg.drop_path)
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        tid = progress.add_task(f"encoder epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch) if progress else None
        for k in range(0, len(order), cfg.batch_size):
            batch = [train[i] for i in order[k:k + cfg.batch_size]]
            h = torch.stack([it.views[rng.randrange(len(it.views))] for it in batch]).float()
            y = torch.tensor([it.label for it in batch])
            logits_fn = lambda x: clf(back(encoder, x, cfg.cut))  # noqa: E731
            if len(batch) > 1 and rng.random() < cfg.mixup:
                lam = float(np.random.default_rng(rng.randrange(2**32)).beta(0.4, 0.4))
                perm = torch.randperm(len(batch))
                logits = logits_fn(lam * h + (1 - lam) * h[perm])
                ce = nn.functional.cross_entropy
                loss = lam * ce(logits, y, weight=weights) + (1 - lam) * ce(logits, y[perm], weight=weights)
            else:
                loss = nn.functional.cross_entropy(logits_fn(h), y, weight=weights)
            losses.append(optimizer_step(opt, loss, clip=params, sched=sched))
            show_loss(progress, tid, f"encoder epoch {epoch + 1}/{cfg.epochs}", losses)
        encoder.eval()
        _set_drop_path(modules, 0.0)
        pv = predict(encoder, clf, val, cfg.cut)
        auc = float(roc_auc_score(yv, pv)) if len(set(yv)) == 2 else float("nan")
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_auroc": auc,
               "seconds": time.time() - t0}
        hist.epochs.append(rec)
        if progress:
            progress.console.print(f"encoder epoch {epoch + 1}: train loss {rec['train_loss']:.4f}  "
                                   f"val AUROC {auc:.4f}")
        if auc > best_auc:
            best_auc, bad, hist.best_epoch = auc, 0, epoch + 1
            best_state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        for m, sd in zip(modules, best_state):
            m.load_state_dict(sd)
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.eval()
    hist.seconds = time.time() - t0
    return hist
