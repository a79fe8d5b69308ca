"""RespLLM instruction tuning (REFERENCE.md §3): trainable projector, LLM LoRA and head; encoder frozen with
its tokens cached, so an epoch costs only the LLM.

Per step, one task's batch: the task prompt (identical for every sample) runs once and its keys/values are
repeated over the batch; the DMS + audio part runs per sample. Batches are grouped by DMS token length, so no
padding is ever needed and every sample is computed exactly as batch-1 inference computes it (the reference
pads DMS texts with attended EOS tokens, REFERENCE.md §5.4). Differences from the reference, all deliberate:
tokens come from the encoder in eval mode (the reference leaves its frozen encoder's drop-path active), LoRA
dropout on the shared prompt pass is shared by the batch, and the LLM runs under bf16 autocast only where the
CPU runs bf16 natively (`precision.py`). With a fine-tuned encoder, an example may carry several augmented
views' tokens, one drawn per epoch; validation and test always use view 0, the scoring input.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from respi_edge.runtime import contract
from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
from respi_edge.runtime.checkpoint import HParams
from respi_edge.runtime.dms import dms_from_row
from respi_edge.runtime.encoder import load_encoder
from respi_edge.runtime.kv_cache import output_cache, with_cache
from respi_edge.runtime.llm import load_config, load_tokenizer, resolve_llm
from respi_edge.runtime.manifest import Manifest, Row, read_manifest
from respi_edge.runtime.model import FlattenHead, ModelInfo, RespLLM
from respi_edge.runtime.prompts import get_task

from .recipe import Recipe
from .splits import patient_split
from .step import optimizer_step, show_loss
from .token_cache import TokenCache


@dataclass
class Example:
    tokens: torch.Tensor  # (64, 768) encoder tokens of view 0 (the first window: what scoring sees)
    dms_ids: torch.Tensor  # (D,)
    label: int
    patient: str
    views: list[torch.Tensor] = field(default_factory=list)  # augmented views' tokens (training only)


@dataclass
class TaskSet:
    task: str
    prompt_ids: torch.Tensor  # (1, P)
    train: list[Example]
    val: list[Example]
    test: list[Example] = field(default_factory=list)
    holdout: list[Example] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(recipe: Recipe, llm_path: str | None = None) -> RespLLM:
    """A fresh trainable RespLLM: base LLM + peft LoRA, new aligner and head (torch default init, seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = resolve_llm(llm_path or recipe.base_llm)
    config = load_config(base)
    if base.has_weights():
        llm = AutoModel.from_pretrained(base.path, dtype=torch.float32)
    else:  # a config-only folder (tests): random base weights from the seed
        llm = AutoModel.from_config(config, dtype=torch.float32)
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        llm = get_peft_model(llm, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                             lora_dropout=recipe.lora_dropout, target_modules=list(recipe.lora_targets)))
    d_llm = config.hidden_size
    if recipe.encoder != "builtin":
        raise ValueError("only the built-in deterministic encoder initialisation is supported for training")
    encoder = load_encoder(synthetic_encoder_state(encoder_init()))
    for p in encoder.parameters():
        p.requires_grad_(False)
    aligner = nn.Linear(contract.ENC_DIM, d_llm)
    head = FlattenHead(recipe.d_ff * contract.N_AUDIO_TOKENS, contract.N_CLS)
    hp = HParams(d_llm=d_llm, d_ff=recipe.d_ff, llm_lora_r=recipe.lora_r, llm_lora_alpha=recipe.lora_alpha,
                 llm_lora_targets=sorted(recipe.lora_targets), llm_hidden=d_llm,
                 llm_layers=config.num_hidden_layers, llm_vocab=config.vocab_size)
    caveats = [base.caveat] if base.caveat else []
    info = ModelInfo(name=recipe.name, caveats=caveats, task=recipe.tasks[0].task)
    model = RespLLM(encoder, aligner, llm, head, load_tokenizer(base), hp, info)
    model.base_llm = base
    return model


def batch_logits(model: RespLLM, prompt_ids: torch.Tensor, dms_ids: torch.Tensor, tokens: torch.Tensor,
                 bf16: bool = False) -> torch.Tensor:
    """Logits (B, n_cls) for B samples sharing the prompt and a DMS length; differentiable."""
    b = tokens.shape[0]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        audio = model.aligner(tokens)
        emb = model.llm.get_input_embeddings()
        cache = None
        if prompt_ids.shape[1]:
            cache = output_cache(model.llm(inputs_embeds=emb(prompt_ids), use_cache=True))
            cache.batch_repeat_interleave(b)
        x = torch.cat([emb(dms_ids), audio.float()], dim=1)
        out = model.llm(inputs_embeds=x, use_cache=cache is not None, **with_cache(cache))
        h = out.last_hidden_state
    hp = model.hparams
    feats = h[:, -hp.patch_nums:, : hp.d_ff].permute(0, 2, 1).float()
    return model.head(feats)


def buckets(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Batches of equal DMS length (no padding), shuffled."""
    by_len: dict[int, list[Example]] = defaultdict(list)
    for e in examples:
        by_len[len(e.dms_ids)].append(e)
    out = []
    for group in by_len.values():
        rng.shuffle(group)
        out += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(out)
    return out


def collate(batch: list[Example], rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(DMS ids, tokens, labels); with `rng`, each example's tokens are drawn from view 0 and its views."""
    def tokens(e: Example) -> torch.Tensor:
        if rng is None or not e.views:
            return e.tokens
        k = rng.randrange(len(e.views) + 1)
        return e.tokens if k == 0 else e.views[k - 1]

    return (torch.stack([e.dms_ids for e in batch]).long(), torch.stack([tokens(e).float() for e in batch]),
            torch.tensor([e.label for e in batch]))


@torch.no_grad()
def predict_examples(model: RespLLM, prompt_ids: torch.Tensor, examples: list[Example],
                     batch_size: int = 32) -> tuple[np.ndarray, float]:
    """P(class 1) per example in input order (fp32, eval mode) and the mean CE loss."""
    model.eval()
    idx_by_len: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        idx_by_len[len(e.dms_ids)].append(i)
    probs = np.zeros(len(examples))
    loss = 0.0
    for idxs in idx_by_len.values():
        for k in range(0, len(idxs), batch_size):
            part = idxs[k:k + batch_size]
            dms, tok, y = collate([examples[i] for i in part])
            logits = batch_logits(model, prompt_ids, dms, tok)
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            probs[part] = torch.softmax(logits, -1)[:, 1].numpy()
    return probs, loss / max(len(examples), 1)


def split_patients(manifest: Manifest, fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Patient-grouped, label-stratified validation split."""
    return patient_split(manifest.rows, fraction, seed)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


@dataclass
class Stopper:
    """Which epoch to keep and when to stop. `loss`: stopping as the reference's EarlyStopper counts (REFERENCE.md
    §3.3: only a loss above best + min_delta counts towards patience), the epoch kept the last to improve the loss by
    more than min_delta. `auroc`: the encoder stage's rule, a new best is any higher mean validation AUROC and every
    other epoch counts."""

    select: str
    patience: int
    min_delta: float
    best: float = math.inf  # lower is better: the loss, or minus the AUROC
    bad: int = 0
    started: bool = False

    def step(self, val_loss: float, val_auroc: float | None) -> tuple[bool, bool]:
        """(this epoch is the new best, stop now)."""
        by_auroc = self.select == "auroc" and val_auroc is not None
        crit = -val_auroc if by_auroc else val_loss
        if not self.started or crit < self.best - (0.0 if by_auroc else self.min_delta):
            self.best, self.bad, self.started = crit, 0, True
            return True, False
        if by_auroc or crit > self.best + self.min_delta:
            self.bad += 1
        return False, self.bad >= self.patience


def train(model: RespLLM, sets: list[TaskSet], recipe: Recipe, progress=None, *, bf16: bool = False) -> History:
    """The training loop: per-step task choice weighted by batch count, early stopping on validation loss (the
    reference's) or, with `select: auroc`, the best epoch by validation AUROC."""
    rng = random.Random(recipe.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=recipe.lr)
    hist, stopper = History(), Stopper(recipe.select, recipe.patience, recipe.min_delta)
    drop_rng = random.Random(recipe.seed + 1)  # its own stream: dms_dropout 0 leaves every other draw as it was
    empty_dms = model.tokenize("")  # (1, 0) for tokenizers that add nothing to an empty text
    best_state = None
    t0 = time.time()
    for epoch in range(recipe.epochs):
        plans = {}
        for s in sets:
            ex = s.train
            if recipe.balance == "downsample":
                pos = [e for e in ex if e.label == 1]
                neg = [e for e in ex if e.label == 0]
                small, big = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
                ex = small + rng.sample(big, len(small))
            plans[s.task] = buckets(ex, recipe.batch_size, rng)
        total = sum(len(v) for v in plans.values())
        model.train()
        model.encoder.eval()
        losses = []
        task_id = progress.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=total) if progress else None
        while any(plans.values()):
            names = [k for k, v in plans.items() if v]
            name = rng.choices(names, weights=[len(plans[k]) for k in names])[0]
            s = next(x for x in sets if x.task == name)
            dms, tok, y = collate(plans[name].pop(), rng)
            if recipe.dms_dropout and drop_rng.random() < recipe.dms_dropout:
                dms = empty_dms.expand(len(y), -1)
            logits = batch_logits(model, s.prompt_ids, dms, tok, bf16=bf16)
            loss = nn.functional.cross_entropy(logits, y)
            losses.append(optimizer_step(opt, loss))
            show_loss(progress, task_id, f"epoch {epoch + 1}/{recipe.epochs}", losses)
        val_loss, val_auc = 0.0, []
        for s in sets:
            p, l = predict_examples(model, s.prompt_ids, s.val)
            val_loss += l
            labels = [e.label for e in s.val]
            if len(set(labels)) == 2:
                from sklearn.metrics import roc_auc_score

                val_auc.append(float(roc_auc_score(labels, p)))
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               "val_auroc": float(np.mean(val_auc)) if val_auc else None, "seconds": time.time() - t0}
        hist.epochs.append(rec)
        if progress:
            progress.console.print(f"epoch {epoch + 1}: train loss {rec['train_loss']:.4f}  val loss "
                                   f"{val_loss:.4f}  val AUROC {rec['val_auroc'] if rec['val_auroc'] is None else round(rec['val_auroc'], 4)}")
        new_best, stop = stopper.step(val_loss, rec["val_auroc"])
        if new_best:
            hist.best_epoch = epoch + 1
            best_state = {k: v.detach().clone() for k, v in trained_state(model).items()}
        if stop:
            hist.stopped_early = True
            break
    if best_state is not None:
        load_trained_state(model, best_state)
    model.eval()
    hist.seconds = time.time() - t0
    return hist


def trained_state(model: RespLLM) -> dict[str, torch.Tensor]:
    """The trained tensors under their official RespLLM names (REFERENCE.md §4)."""
    out = {f"aligner.{k}": v for k, v in model.aligner.state_dict().items()}
    out.update({f"output_projection.{k}": v for k, v in model.head.state_dict().items()})
    out.update({f"llm_model.{k}": v for k, v in model.llm.state_dict().items() if "lora_" in k})
    return out


def load_trained_state(model: RespLLM, state: dict[str, torch.Tensor]) -> None:
    model.aligner.load_state_dict({k[len("aligner."):]: v for k, v in state.items() if k.startswith("aligner.")})
    model.head.load_state_dict({k[len("output_projection."):]: v for k, v in state.items()
                                if k.startswith("output_projection.")})
    llm_sd = {k[len("llm_model."):]: v for k, v in state.items() if k.startswith("llm_model.")}
    missing = model.llm.load_state_dict(llm_sd, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys


@dataclass
class TaskRows:
    """One task's recordings: fitted (train), early stopping (val), scored only (test, holdout)."""
    task: str
    train: list[Row]
    val: list[Row]
    test: list[Row] = field(default_factory=list)
    holdout: list[Row] = field(default_factory=list)

    @property
    def fitted(self) -> list[Row]:
        return self.train + self.val


def task_rows(recipe: Recipe) -> list[TaskRows]:
    """Per task: the holdout patients removed first, then a patient-grouped validation split of the rest."""
    out = []
    for td in recipe.tasks:
        man = read_manifest(td.train)
        held: list[Row] = []
        if td.holdout:
            from .splits import apply_holdout

            kept, held = apply_holdout(man, td.holdout)
            man = Manifest(man.path, kept)
        rows_tr, rows_va = split_patients(man, recipe.val_fraction, recipe.seed)
        if recipe.max_train:
            rows_tr = rows_tr[:recipe.max_train]
            rows_va = rows_va[:max(2, recipe.max_train // 4)]
        rows_te = []
        if td.test:
            rows_te = read_manifest(td.test).rows
            if recipe.max_test:
                rows_te = rows_te[:recipe.max_test]
                held = held[:recipe.max_test]
        out.append(TaskRows(td.task, rows_tr, rows_va, rows_te, held))
    return out


TokensFn = Callable[[Row, bool], tuple[torch.Tensor, list[torch.Tensor]]]


def cached_tokens(cache: TokenCache) -> TokensFn:
    """Frozen encoder: view 0 only, from the token cache."""
    return lambda row, views: (cache.get(row), [])


def prepare(model: RespLLM, recipe: Recipe, rows: list[TaskRows], tokens: TokensFn,
            progress=None) -> list[TaskSet]:
    """Rows → encoder tokens (augmented views for training rows when available) and DMS ids."""
    sets = []
    for tr in rows:
        task = get_task(tr.task)
        n = len(tr.train) + len(tr.val) + len(tr.test) + len(tr.holdout)
        pid = progress.add_task(f"encoder tokens ({tr.task})", total=n) if progress else None

        def ex(row: Row, views: bool = False) -> Example:
            tok, vs = tokens(row, views)
            e = Example(tok, model.tokenize(dms_from_row(row.dms))[0], row.label, row.patient, vs)
            if progress:
                progress.update(pid, advance=1)
            return e

        sets.append(TaskSet(tr.task, model.tokenize(task.prompt), [ex(r, True) for r in tr.train],
                            [ex(r) for r in tr.val], [ex(r) for r in tr.test], [ex(r) for r in tr.holdout]))
    return sets
