"""Language-model losses: next-token cross-entropy, and distillation from a teacher.

The paper reports that distilling from the dense model does not help healing; it stays available so users
can check. The distillation loss is

    alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, targets)
    + hidden_weight · mean over layers of MSE(student hidden state, teacher hidden state)

with the KL averaged over tokens (the T² keeps gradient magnitudes comparable across temperatures,
Hinton et al. 2015). All reductions are in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kronypt.errors import KronyptError
from kronypt.train.args import DistillArgs


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (..., V), targets (...) already shifted."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher/T) ‖ softmax(student/T))."""
    vocab = student_logits.shape[-1]
    log_p_student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")


def hidden_mse(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean squared difference of hidden states.

    Layer i of the student is compared with layer i of the teacher, with no projection or layer mapping, so
    both need as many hidden states of the same shape; anything else is refused in one line (MSE would
    otherwise broadcast or fail deep inside torch).
    """
    if len(student_hidden) != len(teacher_hidden):
        raise KronyptError(f"hidden-state distillation needs the same number of hidden states: student "
                           f"{len(student_hidden)}, teacher {len(teacher_hidden)}")
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden, strict=True)):
        if s.shape != t.shape:
            raise KronyptError(f"hidden-state distillation needs hidden states of the same shape: layer {i} is "
                               f"{tuple(s.shape)} in the student, {tuple(t.shape)} in the teacher")
    losses = [F.mse_loss(s.float(), t.float()) for s, t in zip(student_hidden, teacher_hidden, strict=True)]
    return torch.stack(losses).mean()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
    student_hidden: Sequence[torch.Tensor] | None = None,
    teacher_hidden: Sequence[torch.Tensor] | None = None,
    hidden_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss to optimise, plain cross-entropy for logging)."""
    ce = lm_loss(student_logits, targets)
    loss = alpha * temperature**2 * kl_per_token(student_logits, teacher_logits, temperature) + (1 - alpha) * ce
    if hidden_weight:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("hidden_weight > 0 needs the student's and the teacher's hidden states")
        loss = loss + hidden_weight * hidden_mse(student_hidden, teacher_hidden)
    return loss, ce


def training_loss(student: torch.nn.Module, teacher: torch.nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                  args: DistillArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to optimise, the plain cross-entropy) of `student` on inputs `x` and targets `y`: the same
    tensor without a teacher, else `distillation_loss` from the teacher's outputs (without gradients)."""
    hidden = teacher is not None and args.hidden_weight > 0
    out = student(input_ids=x, output_hidden_states=hidden)
    if teacher is None:
        loss = lm_loss(out.logits, y)
        return loss, loss
    with torch.no_grad():
        ref = teacher(input_ids=x, output_hidden_states=hidden)
    if hidden and (out.hidden_states is None or ref.hidden_states is None):
        raise KronyptError("hidden-state distillation needs hidden states, but the student or the teacher "
                           "returned none for output_hidden_states=True")
    return distillation_loss(out.logits, ref.logits, y, args.alpha, args.temperature,
                             out.hidden_states[1:] if hidden else None,
                             ref.hidden_states[1:] if hidden else None, args.hidden_weight)
