"""Task modules: metrics against hand-computed values, parameter groups, schedules."""

from __future__ import annotations

import pytest
import torch

from lmforge.finetune.optim import build_scheduler, parameter_groups
from lmforge.tasks.text_classification.module import TextClassificationModule


def module(tiny_model, labels, **kwargs) -> TextClassificationModule:
    return TextClassificationModule(pretrained=str(tiny_model), label_names=labels, **kwargs)


def one_hot_logits(predictions: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), n).float() * 5


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
    from lmforge.finetune.strategies import Lora

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
