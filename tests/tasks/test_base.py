"""Task modules: metrics against hand-computed values, parameter groups, schedules."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lmforge.optim import build_scheduler, parameter_groups
from lmforge.tasks.text_classification.module import TextClassificationModule


def module(tiny_model, labels, **kwargs) -> TextClassificationModule:
    return TextClassificationModule(pretrained=str(tiny_model), label_names=labels, **kwargs)


def one_hot_logits(predictions: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), n).float() * 5


def test_single_label_metrics_match_hand_computed_values(tiny_model):
    m = module(tiny_model, ["neg", "neu", "pos"])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = one_hot_logits([0, 1, 1, 1, 2, 0], 3)
    # split in two batches: metrics must accumulate across batches
    m.update_metrics(m.val_metrics, logits[:4], {"labels": labels[:4]})
    m.update_metrics(m.val_metrics, logits[4:], {"labels": labels[4:]})
    values = m.compute_metrics(m.val_metrics)
    # class neg: P=1/2 R=1/2 F1=.5; neu: P=2/3 R=1 F1=.8; pos: P=1 R=1/2 F1=2/3
    assert_close(values["acc"], torch.tensor(4 / 6))
    assert_close(values["f1_neg"], torch.tensor(0.5))
    assert_close(values["f1_neu"], torch.tensor(0.8))
    assert_close(values["f1_pos"], torch.tensor(2 / 3))
    assert_close(values["f1_macro"], torch.tensor((0.5 + 0.8 + 2 / 3) / 3))
    # computing resets: the test stage starts clean and val never shares its state
    m.update_metrics(m.val_metrics, one_hot_logits([2], 3), {"labels": torch.tensor([2])})
    assert_close(m.compute_metrics(m.val_metrics)["acc"], torch.tensor(1.0))
    assert m.val_metrics is not m.test_metrics


def test_multi_label_metrics_match_hand_computed_values(tiny_model):
    m = module(tiny_model, ["a", "b", "c"], multi_label=True, threshold=0.5)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[3.0, -3.0, -3.0], [-3.0, 3.0, 3.0]])  # predicts {a}, {b, c}
    m.update_metrics(m.test_metrics, logits, {"labels": labels})
    values = m.compute_metrics(m.test_metrics)
    # TP=2 FP=1 FN=1 -> micro F1 2/3; per label a=1, b=1, c=0; no row exactly right
    assert_close(values["acc"], torch.tensor(0.0))
    assert_close(values["f1_micro"], torch.tensor(2 / 3))
    assert_close(values["f1_macro"], torch.tensor(2 / 3))
    assert_close(values["f1_c"], torch.tensor(0.0))


def test_losses(tiny_model):
    single = module(tiny_model, ["x", "y"])
    batch = {
        "input_ids": torch.tensor([[101, 2000, 102]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.tensor([1]),
    }
    loss, logits = single.forward_loss(batch)
    assert_close(loss, torch.nn.functional.cross_entropy(logits, batch["labels"]))
    multi = module(tiny_model, ["x", "y"], multi_label=True)
    batch["labels"] = torch.tensor([[1.0, 0.0]])
    loss, logits = multi.forward_loss(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
    assert_close(loss, expected)


def test_head_config_carries_label_names(tiny_model):
    m = module(tiny_model, ["neg", "pos"], classifier_dropout=0.3)
    assert m.model.config.id2label == {0: "neg", 1: "pos"}
    assert m.model.config.classifier_dropout == 0.3
    assert m.model.training  # dropout is on for training


def test_no_weight_decay_on_biases_and_layer_norms(tiny_model):
    m = module(tiny_model, ["neg", "pos"])
    decay, no_decay = parameter_groups(m.named_parameters())
    names = {id(p): n for n, p in m.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len(list(m.parameters()))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
        ("cosine", {0: 0.0, 10: 1.0, 55: 0.5, 100: 0.0}),
        ("constant_with_warmup", {0: 0.0, 10: 1.0, 99: 1.0}),
    ],
)
def test_schedules_warm_up_by_ratio(name, expected):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, num_training_steps=100, name=name, warmup_ratio=0.1)
    seen = {}
    for step in range(101):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step, lr in expected.items():
        assert seen[step] == pytest.approx(lr, abs=1e-6), step


def test_layer_wise_lr_decay_gives_each_depth_its_lr(tiny_model):
    import functools

    m = module(tiny_model, ["neg", "pos"])
    m.optimizer_factory = functools.partial(torch.optim.AdamW, lr=1.0, layer_decay=0.5)
    m.scheduler_factory = None
    optimizer = m.configure_optimizers()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    bert = m.model.bert
    # 2 blocks: embeddings depth 0, blocks 1-2, head (and pooler) depth 3
    assert lr_of[id(bert.embeddings.word_embeddings.weight)] == 0.125
    assert lr_of[id(bert.encoder.layer[0].attention.self.query.weight)] == 0.25
    assert lr_of[id(bert.encoder.layer[1].output.dense.bias)] == 0.5
    assert lr_of[id(m.model.classifier.weight)] == 1.0
    no_decay = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]
    }
    assert id(bert.encoder.layer[1].output.dense.bias) in no_decay
    assert len(lr_of) == len(list(m.parameters()))


@pytest.mark.parametrize("finetune", [None, "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model, finetune):
    from lmforge.strategies import Lora

    batch = {
        "input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]),
        "labels": torch.tensor([1, 0]),
    }
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        strategy = Lora(r=4, dropout=0.0) if finetune else None
        model = module(
            tiny_model, ["a", "b"], finetune=strategy, gradient_checkpointing=checkpointing
        )
        # No dropout: both passes compute the same function.
        for layer in model.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0
        assert bool(getattr(model.model, "is_gradient_checkpointing", False)) is checkpointing
        loss, _ = model.forward_loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (plain_loss, plain_grads), (checked_loss, checked_grads) = results
    torch.testing.assert_close(checked_loss, plain_loss)
    assert plain_grads.keys() == checked_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checked_grads[name], grad, rtol=1e-4, atol=1e-6)
