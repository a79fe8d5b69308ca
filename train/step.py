"""One optimiser step and its progress line, shared by the LLM stage (trainer.py) and the encoder stage
(encoder_tuning.py), so both report the same running loss."""
from __future__ import annotations

import numpy as np
import torch


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: list[torch.nn.Parameter] | None = None,
                   sched=None) -> float:
    """Backward, optional gradient clipping at norm 1, the step (and the schedule's); the loss as a float."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


def show_loss(progress, task_id, label: str, losses: list[float]) -> None:
    """Advance a rich progress task by one batch, its description the label and the mean of the last 20 losses."""
    if progress:
        progress.update(task_id, advance=1, description=f"{label} loss {np.mean(losses[-20:]):.3f}")
