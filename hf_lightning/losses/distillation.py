"""Knowledge distillation (Hinton et al., 2015): train a student on a frozen teacher's soft targets.

The teacher's softmax at temperature T > 1 spreads probability over the wrong-but-plausible
classes; matching it carries more information per example than the one-hot label. Per scored item::

    loss = alpha * T**2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The ``T**2`` keeps the soft term's gradient scale independent of T (the softened gradients shrink
by 1/T**2). Both terms are means over the same non-ignored items, so the total is a mean over
``count_label_items`` items, as the module's exact gradient accumulation requires.

The teacher is deliberately *not* a submodule of the loss: it must never reach the optimizer,
``state_dict()``, a checkpoint, DDP's gradient buckets or Lightning's device moves (which would
copy a possibly large model every time). It is moved to the student's device and dtype lazily, on
first use.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_lightning.errors import ConfigError
from hf_lightning.losses._utils import check_positive, flatten_scored, masked_mean
from hf_lightning.losses.base import IGNORE_INDEX, ModelLoss
from hf_lightning.models import ModelSpec, build_model
from hf_lightning.tasks import task_spec

__all__ = ["DistillationLoss", "distillation_loss"]


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            "alpha", f"must be a number in [0, 1], got {alpha!r}", "use e.g. 0.5 (weight of the teacher term)"
        )
    return float(alpha)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: bool = False,
) -> torch.Tensor:
    """Mean distillation loss over the non-ignored items.

    student_logits, teacher_logits: (N, C) or (B, L, C), same shape, any float dtype (float32 math).
    labels: (N,) or (B, L) class indices, ``ignore_index`` where unscored; the teacher term is
    also skipped there, so padding never teaches the student anything.
    shift_labels: score position t against label t + 1 (causal LM).
    Returns a float32 scalar; 0 when no item is scored.
    """
    temperature = check_positive("temperature", temperature)
    alpha = _check_alpha(alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            "teacher",
            f"teacher logits {tuple(teacher_logits.shape)} do not match student logits {tuple(student_logits.shape)}",
            "use a teacher with the same label set / vocabulary as the student",
        )
    s_flat, safe_labels, mask = flatten_scored(student_logits, labels, ignore_index, shift_labels)
    t_flat, _, _ = flatten_scored(teacher_logits, labels, ignore_index, shift_labels)
    s_flat = s_flat.float()
    log_p_student = F.log_softmax(s_flat / temperature, dim=-1)  # (M, C)
    log_p_teacher = F.log_softmax(t_flat.float() / temperature, dim=-1)  # (M, C)
    # KL(teacher || student) per item; log-space target avoids 0 * log 0 when the teacher is certain.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)  # (M,)
    ce = F.cross_entropy(s_flat, safe_labels, reduction="none")  # (M,)
    per_item = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return masked_mean(per_item, mask)


def _forward_arg_names(model: nn.Module) -> set[str] | None:
    """Named arguments of ``model.forward``; None when it cannot be inspected."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


class DistillationLoss(ModelLoss):
    """Run the student and a frozen teacher on the batch; score with :func:`distillation_loss`.

    ``teacher`` is anything ``hf_lightning.models.build_model`` accepts (a model instance, a local
    directory, a Hub id, a config dict with ``model_type``), built for ``teacher_task`` with
    ``teacher_kwargs``. Teacher and student must share the tokenizer and the label set. For causal
    LMs (``teacher_task="causal-lm"``) labels are shifted, as the task table says.
    """

    def __init__(
        self,
        teacher: ModelSpec,
        temperature: float = 2.0,
        alpha: float = 0.5,
        teacher_task: str = "sequence-classification",
        teacher_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = _check_alpha(alpha)
        self.teacher_task = teacher_task
        self.shift_labels = task_spec(teacher_task).shift_labels
        model = build_model(teacher, teacher_task, teacher_kwargs, field="teacher")
        model.requires_grad_(False)
        model.eval()
        # A plain list hides the teacher from nn.Module's registry: no parameters(), no state_dict(),
        # no .to() from the trainer, no checkpoint. ``teacher`` below is the way in.
        self._teacher_box: list[nn.Module] = [model]
        self._teacher_args = _forward_arg_names(model)

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not a submodule; see the module docstring)."""
        return self._teacher_box[0]

    def train(self, mode: bool = True) -> DistillationLoss:
        """Switch the loss's own submodules; the teacher stays in eval mode (no dropout noise)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _place_teacher(self, student: nn.Module, like: torch.Tensor) -> None:
        """Move/cast the teacher to where the student computes, once (later calls are no-ops)."""
        float_param = next((p for p in student.parameters() if p.is_floating_point()), None)
        dtype = float_param.dtype if float_param is not None else None
        teacher_param = next(self.teacher.parameters(), None)
        if teacher_param is None:
            return
        if teacher_param.device != like.device or (dtype is not None and teacher_param.dtype != dtype):
            self.teacher.to(device=like.device, dtype=dtype)

    def _teacher_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self._teacher_args is None:
            return inputs
        return {k: v for k, v in inputs.items() if k in self._teacher_args}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        inputs = dict(batch)
        if "labels" not in inputs:
            raise ConfigError(
                "labels", "the batch has no 'labels'", "distillation needs labels for its hard-target term"
            )
        # seq2seq models build their decoder inputs from labels, so they must see them.
        labels = inputs["labels"] if self.teacher_task == "seq2seq-lm" else inputs.pop("labels")
        outputs = model(**inputs)
        student_logits = outputs.logits
        self._place_teacher(model, student_logits)
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(**self._teacher_inputs(inputs)).logits
        loss = distillation_loss(
            student_logits,
            teacher_logits,
            labels,
            self.temperature,
            self.alpha,
            IGNORE_INDEX,
            self.shift_labels,
        )
        return loss, outputs

    def extra_repr(self) -> str:
        return (
            f"teacher={type(self.teacher).__name__}, temperature={self.temperature}, alpha={self.alpha}, "
            f"teacher_task={self.teacher_task!r}"
        )
