"""Fine-tuning strategies: exact trainable counts, frozen weights stay, trainable ones move."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertModel

from lmforge.config.compatibility import strategy_problem
from lmforge.errors import LmforgeError
from lmforge.finetune.strategies import IA3, Freeze, Full, Lora, PrefixTuning, PromptTuning
from lmforge.tasks.language_modeling.module import CausalLMModule, MaskedLMModule
from lmforge.tasks.runs import load_task_module
from lmforge.tasks.text_classification.module import TextClassificationModule
from lmforge.tasks.token_classification.module import TokenClassificationModule
from lmforge.train import train


def build(tiny_model, strategy) -> TextClassificationModule:
    return TextClassificationModule(
        pretrained=str(tiny_model), label_names=["a", "b", "c"], finetune=strategy
    )


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_trainable_counts_are_exact(tiny_model):
    full = build(tiny_model, Full())
    total = count(full)
    assert full.parameter_counts() == {
        "trainable": total,
        "total": total,
        "trainable_percent": 100.0,
    }
    bert = full.model.bert
    embeddings = count(bert.embeddings)
    layer = count(bert.encoder.layer[0])
    head = 32 * 3 + 3  # classifier weight + bias
    pooler = count(bert.pooler)
    assert build(tiny_model, Freeze(embeddings=True)).parameter_counts()["trainable"] == (
        total - embeddings
    )
    assert (
        build(tiny_model, Freeze(embeddings=True, layers=1)).parameter_counts()["trainable"]
        == total - embeddings - layer
    )
    probe = build(tiny_model, Freeze(backbone=True)).parameter_counts()
    assert probe["trainable"] == head
    assert probe["trainable_percent"] == pytest.approx(100 * head / total, abs=1e-3)
    assert total == embeddings + 2 * layer + pooler + head


def test_freezing_more_layers_than_exist_is_refused(tiny_model):
    with pytest.raises(LmforgeError, match=r"finetune\.layers=5, but the model has 2 layers"):
        build(tiny_model, Freeze(layers=5))


def test_frozen_weights_stay_and_trainable_ones_move(make_cfg, tmp_path, tiny_model):
    train(make_cfg("finetune=freeze", "finetune.layers=1", "debug=limit"))
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    start = BertModel.from_pretrained(str(tiny_model)).state_dict()
    for name in (
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
    ):
        torch.testing.assert_close(state[f"model.bert.{name}"], start[name])
    moved = "encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(state[f"model.bert.{moved}"], start[moved])
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["finetune"] == {
        "name": "freeze",
        "embeddings": True,
        "layers": 1,
        "backbone": False,
        "unfreeze_every": 0,
    }
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]


def test_init_from_continues_from_another_runs_weights(make_cfg, tmp_path):
    train(make_cfg("debug=limit", run="first"))
    first = tmp_path / "first/checkpoints/best.ckpt"
    train(make_cfg("debug=limit", f"model.init_from={first}", "train=false", run="second"))
    before = json.loads((tmp_path / "second/metrics.json").read_text())["before_training"]
    assert before["start"] == {"from": f"checkpoint {first}", "newly_initialised": []}
    assert "real before/after comparison" in before["note"]
    first_test = json.loads((tmp_path / "first/metrics.json").read_text())["test"]
    second_test = json.loads((tmp_path / "second/metrics.json").read_text())["test"]
    for key, value in first_test.items():  # the same weights give the same figures
        assert before["test"][key] == pytest.approx(value, abs=1e-6), key
        assert second_test[key] == pytest.approx(value, abs=1e-6), key


def test_init_from_an_unrelated_checkpoint_is_refused(tmp_path, tiny_model):
    from lmforge.tasks.language_modeling.module import CausalLMModule

    gpt = CausalLMModule(
        pretrained=None,
        tokenizer=str(tiny_model),
        from_config={
            "model_type": "gpt2",
            "n_layer": 1,
            "n_embd": 16,
            "n_head": 2,
            "n_positions": 32,
        },
    )
    path = tmp_path / "gpt.ckpt"
    torch.save({"state_dict": gpt.state_dict(), "lmforge": {"task": "causal_lm"}}, path)
    with pytest.raises(LmforgeError, match="no weight of that checkpoint fits"):
        TextClassificationModule(
            pretrained=str(tiny_model), label_names=["a", "b"], init_from=str(path)
        )


def test_layer_decay_runs_end_to_end_with_the_schedule(make_cfg, tmp_path):
    train(make_cfg("optimizer.layer_decay=0.8", "debug=limit"))
    rows = (tmp_path / "run/csv/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    lr_columns = [c for c in header if c.startswith("lr-AdamW")]
    assert len(lr_columns) > 2  # one group per depth and decay kind
    assert (tmp_path / "run/metrics.json").is_file()


# ----- parameter-efficient methods ------------------------------------------------------------
HIDDEN, LAYERS, HEAD = 32, 2, 32 * 3 + 3


def test_lora_and_dora_trainable_counts_are_exact(tiny_model):
    total = count(build(tiny_model, Full()))
    r = 4
    per_module = r * HIDDEN + HIDDEN * r  # A (r x in) + B (out x r)
    lora = build(tiny_model, Lora(r=r)).parameter_counts()  # query and value of each layer
    assert lora["trainable"] == LAYERS * 2 * per_module + HEAD
    assert lora["total"] == total + LAYERS * 2 * per_module
    dora = build(tiny_model, Lora(r=r, use_dora=True)).parameter_counts()
    assert dora["trainable"] == lora["trainable"] + LAYERS * 2 * HIDDEN  # one magnitude per row
    every = build(tiny_model, Lora(r=r, target_modules="all-linear")).parameter_counts()
    # query, key, value, attention output, intermediate (32->64), output (64->32), pooler
    per_layer = 4 * per_module + 2 * (r * HIDDEN + 64 * r)
    assert every["trainable"] == LAYERS * per_layer + per_module + HEAD


def test_ia3_and_prompt_methods_train_few_parameters(tiny_model):
    ia3 = build(tiny_model, IA3()).parameter_counts()
    # key, value (scaled outputs); attention output (32 in) and FFN output (64 in): both match
    # peft's "output.dense" and are scaled on their inputs.
    assert ia3["trainable"] == LAYERS * (HIDDEN + HIDDEN + HIDDEN + 64) + HEAD
    prompt = build(tiny_model, PromptTuning(num_virtual_tokens=5)).parameter_counts()
    assert prompt["trainable"] == 5 * HIDDEN + HEAD


def optimizer_steps(module, steps: int = 3) -> None:
    batch = {
        "input_ids": torch.randint(1000, 2000, (4, 12)),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 2, 0]),
    }
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    module.train()
    for _ in range(steps):
        loss, _ = module.forward_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(
    "strategy",
    [Lora(r=4), Lora(r=4, use_dora=True), IA3(), PromptTuning(4), PrefixTuning(4)],
    ids=["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning"],
)
def test_peft_freezes_the_base_and_trains_adapters_and_head(tiny_model, strategy):
    if problem := strategy_problem(strategy.name):
        # The installed transformers/peft pair is known to break it: refused, naming both.
        with pytest.raises(LmforgeError) as refused:
            build(tiny_model, strategy)
        assert str(refused.value) == problem
        return
    module = build(tiny_model, strategy)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer_steps(module)
    after = dict(module.named_parameters())
    for name, param in after.items():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            torch.testing.assert_close(param, before[name], msg=f"{name} moved")
    assert any("classifier" in n for n, p in after.items() if p.requires_grad)


def test_lora_merged_model_matches_the_adapted_one(tiny_model):
    module = build(tiny_model, Lora(r=4, dropout=0.0))
    optimizer_steps(module)  # before training LoRA's update is zero: nothing to compare
    module.eval()
    inputs = {"input_ids": torch.randint(1000, 2000, (3, 9))}
    merged = module.export_model()
    assert type(merged).__name__ == "BertForSequenceClassification"
    base_logits = module.model.get_base_model()(**inputs).logits
    with module.model.disable_adapter():
        plain = module.model(**inputs).logits
    assert not torch.allclose(plain, base_logits)  # the adapter changes the outputs
    torch.testing.assert_close(merged(**inputs).logits, module.model(**inputs).logits)


@pytest.mark.parametrize("strategy", [PromptTuning(4), PrefixTuning(4)], ids=lambda s: s.name)
def test_prompt_methods_on_a_causal_lm_generate_what_the_forward_pass_predicts(tiny_gpt2, strategy):
    if problem := strategy_problem(strategy.name):
        with pytest.raises(LmforgeError, match="does not work with the installed transformers"):
            CausalLMModule(pretrained=str(tiny_gpt2), finetune=strategy)
        assert "transformers" in problem and "peft" in problem
        return
    torch.manual_seed(0)
    module = CausalLMModule(pretrained=str(tiny_gpt2), finetune=strategy)
    model = module.model.eval()
    with torch.no_grad():  # a large prompt, so that a dropped one changes the continuation
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 3.0)
    prompt = torch.randint(1000, 2000, (1, 6))
    generated = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
    )
    greedy = prompt  # greedy decoding by hand: one full forward pass per new token
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=greedy, attention_mask=torch.ones_like(greedy)).logits
            greedy = torch.cat([greedy, logits[:, -1:].argmax(dim=-1)], dim=1)
    assert torch.equal(generated, greedy)
    with torch.no_grad():
        adapted = model(input_ids=prompt).logits[:, -1]
        with model.disable_adapter():
            plain = model(input_ids=prompt).logits[:, -1]
    assert not torch.allclose(plain, adapted)  # the virtual tokens do reach the model


def test_prompt_methods_refuse_merging_and_token_classification(tiny_model):
    with pytest.raises(LmforgeError, match="cannot be merged"):
        build(tiny_model, PromptTuning(4)).export_model()
    with pytest.raises(LmforgeError, match="not supported for token_classification"):
        TokenClassificationModule(
            pretrained=str(tiny_model), label_names=["O", "B-X"], finetune=PromptTuning(4)
        )


def test_lora_on_a_module_that_does_not_exist_names_the_real_ones(tiny_model):
    with pytest.raises(
        LmforgeError,
        match=r"peft could not wrap.*Linear modules of this model: .*"
        r"query",
    ):
        build(tiny_model, Lora(target_modules=["q_proj"]))


def test_masked_lm_lora_trains_the_fresh_head_but_not_the_tied_decoder(tiny_model):
    module = MaskedLMModule(pretrained=str(tiny_model), tokenizer=str(tiny_model), finetune=Lora())
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("cls.predictions.transform.dense" in n for n in trainable)
    assert not any("word_embeddings" in n or "decoder.weight" in n for n in trainable)


def test_lora_run_saves_adapters_and_head_only_and_reloads(make_cfg, tmp_path):
    train(make_cfg("finetune=lora", "finetune.dropout=0.0", "debug=limit", run="lora"))
    train(make_cfg("debug=limit", run="full"))
    lora_ckpt = tmp_path / "lora/checkpoints/last.ckpt"
    state = torch.load(lora_ckpt, weights_only=False)
    keys = set(state["state_dict"])
    assert keys and all("lora_" in k or "classifier" in k for k in keys)
    assert state["lmforge"]["finetune"]["name"] == "lora"
    full_size = (tmp_path / "full/checkpoints/last.ckpt").stat().st_size
    assert lora_ckpt.stat().st_size < full_size / 3
    module = load_task_module(lora_ckpt)
    reloaded = dict(module.state_dict())
    for key, value in state["state_dict"].items():
        torch.testing.assert_close(reloaded[key], value)
    metrics = json.loads((tmp_path / "lora/metrics.json").read_text())
    assert metrics["finetune"]["name"] == "lora"
    full_metrics = json.loads((tmp_path / "full/metrics.json").read_text())
    lora_size = metrics["best_validation"]["checkpoint_megabytes"]
    assert 0 < lora_size < full_metrics["best_validation"]["checkpoint_megabytes"] / 3
    assert metrics["peak_memory"]["rss_megabytes"] > 0
    assert metrics["parameters"]["trainable_percent"] < 1


# ----- gradual unfreezing ---------------------------------------------------------------------
def test_gradual_unfreezing_releases_one_part_per_epoch_top_down(tiny_model):
    module = build(tiny_model, Freeze(backbone=True, unfreeze_every=1))
    bert = module.model.bert

    def trainable(part) -> bool:
        flags = {p.requires_grad for p in part.parameters()}
        assert len(flags) == 1
        return flags.pop()

    parts = [bert.embeddings, bert.encoder.layer[0], bert.encoder.layer[1], bert.pooler]
    expected = {
        0: [False, False, False, False],
        1: [False, False, True, True],
        2: [False, True, True, True],
        3: [True, True, True, True],
        7: [True, True, True, True],
    }
    for epoch, flags in expected.items():
        module.finetune.on_train_epoch_start(epoch)
        assert [trainable(p) for p in parts] == flags, epoch
        assert trainable(module.model.classifier)
    # A resumed run restores the state of its epoch, whatever came before.
    module.finetune.on_train_epoch_start(1)
    assert [trainable(p) for p in parts] == expected[1]
    assert len(module.finetune.pending_parameters()) == len(list(bert.parameters()))


def test_gradual_unfreezing_run_moves_only_released_blocks(make_cfg, tmp_path, tiny_model):
    train(make_cfg("finetune=gradual_unfreeze", "debug=limit"))
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    start = BertModel.from_pretrained(str(tiny_model)).state_dict()
    query = "encoder.layer.{}.attention.self.query.weight"
    # Epoch 0 trains the head, epoch 1 adds the top block; the rest never moves.
    assert not torch.equal(state[f"model.bert.{query.format(1)}"], start[query.format(1)])
    torch.testing.assert_close(state[f"model.bert.{query.format(0)}"], start[query.format(0)])
    word = "embeddings.word_embeddings.weight"
    torch.testing.assert_close(state[f"model.bert.{word}"], start[word])
