"""Distillation and LM losses against hand-computed references on fixed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from kronypt.errors import KronyptError
from kronypt.train.distill import distillation_loss, hidden_mse, kl_per_token, lm_loss

STUDENT = [[[1.0, 2.0, 0.5, -1.0, 0.0], [0.3, -0.2, 2.5, 1.0, -3.0]]]  # (batch 1, 2 tokens, vocab 5)
TEACHER = [[[0.5, 2.5, 0.0, -0.5, 1.0], [1.0, 0.0, 2.0, 0.0, -1.0]]]
TARGETS = [[1, 2]]


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_norm for v in scaled]


def _reference(alpha: float, temperature: float) -> tuple[float, float]:
    """(total, ce) by the formula: alpha·T²·mean_t KL(p_teacher ‖ p_student) + (1 − alpha)·mean_t CE."""
    kls, ces = [], []
    for s_row, t_row, target in zip(STUDENT[0], TEACHER[0], TARGETS[0], strict=True):
        log_s, log_t = _log_softmax(s_row, temperature), _log_softmax(t_row, temperature)
        kls.append(sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t, strict=True)))
        ces.append(-_log_softmax(s_row)[target])
    kl, ce = sum(kls) / len(kls), sum(ces) / len(ces)
    return alpha * temperature**2 * kl + (1 - alpha) * ce, ce


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 2.0), (1.0, 1.0), (0.0, 3.0), (0.3, 0.7)])
def test_distillation_loss_matches_the_formula(alpha: float, temperature: float) -> None:
    total, ce = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS),
                                  alpha=alpha, temperature=temperature)
    want_total, want_ce = _reference(alpha, temperature)
    assert total.item() == pytest.approx(want_total, rel=1e-6)
    assert ce.item() == pytest.approx(want_ce, rel=1e-6)


def test_kl_is_zero_for_equal_logits_and_lm_loss_is_cross_entropy() -> None:
    logits = torch.tensor(STUDENT)
    assert kl_per_token(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert lm_loss(logits, torch.tensor(TARGETS)).item() == pytest.approx(_reference(0.0, 1.0)[1], rel=1e-6)


def test_hidden_mse_is_the_mean_over_layers_and_enters_with_its_weight() -> None:
    student = [torch.zeros(1, 2, 3), torch.ones(1, 2, 3)]
    teacher = [torch.full((1, 2, 3), 2.0), torch.ones(1, 2, 3)]  # layer MSEs 4 and 0
    assert hidden_mse(student, teacher).item() == pytest.approx(2.0)
    args = (torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS))
    base, _ = distillation_loss(*args, alpha=0.5, temperature=2.0)
    with_hidden, _ = distillation_loss(*args, alpha=0.5, temperature=2.0, student_hidden=student,
                                       teacher_hidden=teacher, hidden_weight=0.25)
    assert with_hidden.item() == pytest.approx(base.item() + 0.25 * 2.0, rel=1e-6)
    with pytest.raises(ValueError, match="hidden states"):
        distillation_loss(*args, alpha=0.5, temperature=2.0, hidden_weight=1.0)


def test_hidden_mse_refuses_other_depths_and_widths_in_one_line() -> None:
    student = [torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)]
    with pytest.raises(KronyptError, match="same number of hidden states: student 2, teacher 3"):
        hidden_mse(student, [*student, torch.zeros(1, 2, 3)])
    with pytest.raises(KronyptError, match=r"layer 0 is \(1, 2, 3\) in the student, \(1, 2, 5\) in the teacher"):
        hidden_mse(student, [torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)])
