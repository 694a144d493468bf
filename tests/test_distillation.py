"""Knowledge distillation: the loss against hand-computed values, a frozen teacher, real runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.finetune.distillation import Distillation, distillation_loss
from lmforge.tasks.runs import load_teacher
from lmforge.tasks.text_classification.module import TextClassificationModule
from lmforge.tasks.token_classification.module import TokenClassificationModule
from lmforge.train import train


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_loss_is_t_squared_times_kl_of_teacher_to_student():
    student, teacher = [2.0, 0.0, -1.0], [0.0, 0.5, 1.0]
    for temperature in (1.0, 2.0, 4.0):
        p_student = softmax([v / temperature for v in student])
        p_teacher = softmax([v / temperature for v in teacher])
        expected = temperature**2 * kl(p_teacher, p_student)
        got = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), temperature)
        assert got.item() == pytest.approx(expected, rel=1e-5)
        # The other direction differs for these logits: the test pins which one is used.
        assert got.item() != pytest.approx(temperature**2 * kl(p_student, p_teacher), rel=1e-3)


def test_loss_averages_examples_and_skips_masked_positions():
    student = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [5.0, -5.0]]])  # (2, 2, 2)
    teacher = torch.zeros(2, 2, 2)
    mask = torch.tensor([[True, False], [True, False]])
    per_position = [kl([0.5, 0.5], softmax([1.0, 0.0])), kl([0.5, 0.5], softmax([0.0, 2.0]))]
    got = distillation_loss(student, teacher, 1.0, mask)
    assert got.item() == pytest.approx(sum(per_position) / 2, rel=1e-5)
    assert distillation_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.fixture
def teacher_dir(tiny_model, tmp_path):
    """A Hugging Face folder holding a classifier over the tiny data's labels."""
    teacher = TextClassificationModule(
        pretrained=str(tiny_model), label_names=["sports", "cooking", "music"]
    ).export_model()
    teacher.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def batch_of(labels: list[int]) -> dict[str, torch.Tensor]:
    n = len(labels)
    return {
        "input_ids": torch.randint(1000, 2000, (n, 10)),
        "attention_mask": torch.ones(n, 10, dtype=torch.long),
        "labels": torch.tensor(labels),
    }


def distilled(student, teacher, **options):
    """`student` learning from `teacher` (a path or hub name), as the training recipe sets it."""
    Distillation(str(teacher), **options).attach(
        student, load_teacher(str(teacher), student.family)
    )
    return student


def student_with(tiny_model, teacher, alpha: float) -> TextClassificationModule:
    student = TextClassificationModule(
        pretrained=str(tiny_model), label_names=["sports", "cooking", "music"]
    )
    return distilled(student, teacher, alpha=alpha, temperature=2.0)


def test_alpha_one_gives_the_task_loss_and_no_gradient_reaches_the_teacher(
    tiny_model, teacher_dir, monkeypatch
):
    student = student_with(tiny_model, teacher_dir, alpha=1.0)
    monkeypatch.setattr(student, "log", lambda *a, **k: None)
    batch = batch_of([0, 1, 2, 1])
    torch.manual_seed(0)
    task_loss, _ = student.eval().forward_loss(batch)
    torch.manual_seed(0)
    loss = student.training_step(batch, 0)
    assert loss.item() == pytest.approx(task_loss.item(), rel=1e-6)

    mixed = student_with(tiny_model, teacher_dir, alpha=0.3).eval()
    monkeypatch.setattr(mixed, "log", lambda *a, **k: None)
    task_loss, logits = mixed.forward_loss(batch)
    teacher_logits = mixed.distill.teacher(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    expected = 0.3 * task_loss + 0.7 * distillation_loss(logits, teacher_logits, 2.0)
    loss = mixed.training_step(batch, 0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    teacher = mixed.distill.teacher
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in mixed.parameters() if p.requires_grad)
    # The teacher is not part of the student: not saved, not trained.
    assert not any("teacher" in key for key in mixed.state_dict())


def test_a_teacher_with_other_labels_or_a_multi_label_student_is_refused(tiny_model, teacher_dir):
    names = ["sports", "cooking", "music"]
    with pytest.raises(LmforgeError, match=r"predicts the labels \['sports'.*must match"):
        distilled(
            TextClassificationModule(pretrained=str(tiny_model), label_names=["a", "b", "c"]),
            teacher_dir,
        )
    with pytest.raises(LmforgeError, match="not available for text_classification"):
        multi = TextClassificationModule(
            pretrained=str(tiny_model), label_names=names, multi_label=True
        )
        distilled(multi, teacher_dir)
    with pytest.raises(LmforgeError, match=r"distill\.alpha must be in"):
        Distillation(str(teacher_dir), alpha=1.5)
    with pytest.raises(LmforgeError, match="neither an lmforge checkpoint nor a model"):
        distilled(
            TextClassificationModule(pretrained=str(tiny_model), label_names=names),
            "/no/such/teacher",
        )


def test_token_classification_distills_only_labelled_subwords(tiny_model, tmp_path):
    tags = ["O", "B-LANG", "I-LANG"]
    teacher = TokenClassificationModule(pretrained=str(tiny_model), label_names=tags)
    teacher.export_model().save_pretrained(tmp_path / "ner_teacher")
    student = TokenClassificationModule(pretrained=str(tiny_model), label_names=tags)
    student = distilled(student, tmp_path / "ner_teacher", alpha=0.0, temperature=1.0).eval()
    student.log = lambda *a, **k: None
    batch = batch_of([0, 0])
    batch["labels"] = torch.tensor([[-100, 0, 1, 2, -100, -100, 0, 0, 0, -100]] * 2)
    _, logits = student.forward_loss(batch)
    teacher_logits = student.distill.teacher(input_ids=batch["input_ids"]).logits
    mask = batch["labels"] != -100
    expected = distillation_loss(logits[mask], teacher_logits[mask], 1.0)
    torch.testing.assert_close(student.training_step(batch, 0), expected)


def test_a_run_distils_from_another_runs_checkpoint(make_cfg, tmp_path):
    train(make_cfg("debug=limit", run="teacher"))
    train(make_cfg("debug=limit", f"distill.teacher={tmp_path / 'teacher'}", run="student"))
    metrics = json.loads((tmp_path / "student/metrics.json").read_text())
    assert metrics["test"]
    header = (tmp_path / "student/csv/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/task_loss", "train/distill_loss"} <= set(header)
    # The teacher's weights never enter the student's checkpoint.
    state = torch.load(tmp_path / "student/checkpoints/last.ckpt", weights_only=True)
    assert not any("teacher" in key for key in state["state_dict"])
