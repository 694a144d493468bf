"""Knowledge distillation: a student learns from a teacher's softened predictions.

loss = alpha * task loss + (1 - alpha) * T^2 * KL(p_teacher || p_student), with both
distributions softened by the temperature T (Hinton et al.'s recipe: the T^2 keeps the soft
term's gradients on the scale of the task loss's as T changes).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) over the last dimension, averaged over the examples
    (or the positions where `mask` is true: labelled tokens for tagging)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # kl_div(input=log q, target=log p) is sum p * (log p - log q) = KL(p_teacher || q_student).
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(dim=-1)
    if mask is not None:
        kl = kl[mask]
    return temperature**2 * kl.mean()


class Distillation:
    """Train the student against a frozen teacher as well as the labels.

    Args:
        teacher: an lmforge checkpoint (`.ckpt` file or a run directory) of the same task, or a
            Hugging Face model name or folder with the same labels; it must share the
            student's tokenizer (the same input ids mean the same tokens).
        alpha: weight of the task loss; 1 - alpha weighs the distillation term.
        temperature: softens both distributions (above 1 shows the teacher's second choices).
    """

    def __init__(self, teacher: str, alpha: float = 0.5, temperature: float = 2.0) -> None:
        if not 0 <= alpha <= 1:
            raise LmforgeError(f"distill.alpha must be in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise LmforgeError(f"distill.temperature must be above 0, got {temperature}.")
        self.source = str(teacher)
        self.alpha = alpha
        self.temperature = temperature
        self._teacher: nn.Module | None = None

    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            raise LmforgeError("distill: the teacher is not loaded (attach it to a task first).")
        return self._teacher

    def attach(self, student: Any, teacher: nn.Module) -> None:
        """Take `teacher` for `student` (a task module) after checking that the two can be
        compared: same vocabulary, same labels in the same order."""
        if not student.supports_distillation():
            raise LmforgeError(
                f"distill.teacher is set, but distillation is not available for "
                f"{student.task_name} runs of this kind (it needs a softmax over labels: "
                "single-label classification or tagging)."
            )
        student_vocab = student.model.config.vocab_size
        config: Any = teacher.config  # a Hugging Face model's PretrainedConfig
        if config.vocab_size != student_vocab:
            raise LmforgeError(
                f"distill.teacher={self.source!r} has a vocabulary of "
                f"{config.vocab_size} tokens, the student {student_vocab}: teacher and "
                "student must share one tokenizer."
            )
        teacher_labels = [config.id2label[i] for i in range(config.num_labels)]
        if teacher_labels != list(student.label_names):
            raise LmforgeError(
                f"distill.teacher={self.source!r} predicts the labels {teacher_labels}, but "
                f"the student's are {list(student.label_names)}; they must match in order."
            )
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = teacher
        student.distill = self
        log.info("Distilling from %s (alpha=%s, T=%s)", self.source, self.alpha, self.temperature)

    def combined_loss(
        self,
        student: Any,
        task_loss: torch.Tensor,
        student_logits: torch.Tensor,
        batch: dict[str, Any],
    ) -> torch.Tensor:
        """alpha * task loss + (1 - alpha) * T^2 * KL; logs both terms."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        soft = distillation_loss(
            student_logits, teacher_logits, self.temperature, student.distillation_mask(batch)
        )
        size = student.batch_size_of(batch)
        student.log("train/task_loss", task_loss, on_step=False, on_epoch=True, batch_size=size)
        student.log("train/distill_loss", soft, on_step=False, on_epoch=True, batch_size=size)
        return self.alpha * task_loss + (1 - self.alpha) * soft
