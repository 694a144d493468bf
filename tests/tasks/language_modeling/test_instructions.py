"""Instruction and chat fine-tuning of causal LMs: formats, templates, masks, EOS, truncation,
the data checks, predict with the template and export of the tokenizer that carries it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict
from transformers import AutoTokenizer

from lmforge.config.resources import embedded_model_path, shipped_data
from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.export import export
from lmforge.predict import predict
from lmforge.tasks.language_modeling.chat import encode_spans, marked_text, render
from lmforge.tasks.language_modeling.instructions import InstructionDataModule
from tests.helpers import compose_config
from tests.tasks.language_modeling.runs import one_file_datamodule, tiny_run

BPE_TOKENIZER = shipped_data("debian_translations/tokenizer")
# A Llama-2-style template: it writes the BOS itself and ends answers with EOS.
LLAMA_STYLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}{% else %}"
    "<<SYS>>{{ m['content'] }}<</SYS>>{% endif %}{% endfor %}"
)
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is vim for?"},
            {"role": "assistant", "content": "Editing text."},
            {"role": "user", "content": "Tell me more."},
            {"role": "assistant", "content": "It is a modal editor."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "What is mutt for?"},
            {"role": "assistant", "content": "Reading mail."},
        ]
    },
]


def _datamodule(tmp_path: Path, rows: list[dict], **options) -> InstructionDataModule:
    options = {"format": "messages", **options}
    return one_file_datamodule(InstructionDataModule, tmp_path, rows, **options)


def _trained_text(datamodule: InstructionDataModule, row: int) -> list[str]:
    """The runs of trained tokens of a training example, decoded."""
    example = datamodule.splits["train"][row]
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    tokenizer = datamodule.tokenizer
    return [tokenizer.decode(run) for run in runs]


def test_assistant_turns_and_their_eos_train_nothing_else(tmp_path):
    datamodule = _datamodule(tmp_path, CHATS)
    # WordPiece lowercases; [SEP] is the EOS of a tokenizer without one.
    assert _trained_text(datamodule, 0) == [
        "editing text. [SEP]",
        "it is a modal editor. [SEP]",
    ]
    assert _trained_text(datamodule, 1) == ["reading mail. [SEP]"]


def test_train_on_last_and_all(tmp_path):
    last = _datamodule(tmp_path / "last", CHATS, train_on="last")
    assert _trained_text(last, 0) == ["it is a modal editor. [SEP]"]
    everything = _datamodule(tmp_path / "all", CHATS, train_on="all")
    example = everything.splits["train"][0]
    assert example["labels"] == example["input_ids"]


def test_sharegpt_turns_become_messages(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "What is mutt for?"},
                {"from": "gpt", "value": "Reading mail."},
            ]
        }
    ]
    datamodule = _datamodule(tmp_path, rows, format="sharegpt", messages_column="conversations")
    assert _trained_text(datamodule, 0) == ["reading mail. [SEP]"]


def test_an_alpaca_prompt_template_over_named_columns(tmp_path):
    rows = [{"instruction": "Name an editor.", "output": "Vim."}]
    datamodule = _datamodule(
        tmp_path,
        rows,
        format="prompt_completion",
        prompt_template="### Instruction:\n{instruction}\n\n### Response:\n",
        completion_column="output",
    )
    assert _trained_text(datamodule, 0) == ["vim. [SEP]"]
    ids = datamodule.splits["train"][0]["input_ids"]
    assert datamodule.tokenizer.decode(ids).startswith("# # # instruction : name an editor.")


def test_a_template_typed_on_the_command_line_gets_its_line_breaks(tmp_path):
    # What a shell passes for data.prompt_template="Q:\n{instruction}\nA:": backslash-n.
    cfg = compose_config(
        ["experiment=debian_chat_gpt2", "data=instructions", 'data.prompt_template="Q:\\n{q}\\nA:"']
    )
    assert cfg.data.prompt_template == "Q:\\n{q}\\nA:"
    datamodule = _datamodule(
        tmp_path,
        [{"q": "Name an editor.", "completion": "Vim."}],
        format="prompt_completion",
        prompt_template=cfg.data.prompt_template,
    )
    assert datamodule.prompt_template == "Q:\n{q}\nA:"


def test_the_generation_prompt_is_a_token_prefix_of_the_training_rendering():
    for name, template in ((embedded_model_path(), None), (BPE_TOKENIZER, LLAMA_STYLE)):
        tokenizer = AutoTokenizer.from_pretrained(name)
        if tokenizer.eos_token is None:
            tokenizer.eos_token = tokenizer.sep_token
        from lmforge.tasks.language_modeling.chat import assistant_spans, chat_template_of

        text = template or chat_template_of(tokenizer, None)
        messages = CHATS[0]["messages"]
        full, spans = assistant_spans(tokenizer, messages, text, "assistant")
        training = encode_spans(tokenizer, full, spans)
        prompt = render(tokenizer, messages[:4], text, add_generation_prompt=True)
        prompt_ids = encode_spans(tokenizer, prompt, []).input_ids
        assert training.input_ids[: len(prompt_ids)] == prompt_ids
        # The last answer's first token is the first trained token after the prompt.
        assert training.trained[len(prompt_ids)] and not training.trained[len(prompt_ids) - 1]


def test_a_template_that_writes_the_bos_gets_no_second_one():
    tokenizer = AutoTokenizer.from_pretrained(BPE_TOKENIZER)
    rendered = render(tokenizer, CHATS[1]["messages"], LLAMA_STYLE)
    ids = encode_spans(tokenizer, rendered, []).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_long_conversations_drop_their_first_exchanges_and_keep_the_system_message(tmp_path):
    long_first = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is vim for? " * 12},
            {"role": "assistant", "content": "Editing text and much more. " * 6},
            {"role": "user", "content": "Tell me more."},
            {"role": "assistant", "content": "It is modal."},
        ]
    }
    hopeless = {
        "messages": [
            {"role": "user", "content": "Why? " * 5},
            {"role": "assistant", "content": "Because. " * 60},
        ]
    }
    datamodule = _datamodule(tmp_path, [long_first, hopeless, CHATS[1]], max_length=48)
    assert len(datamodule.splits["train"]) == 2  # the hopeless one is left out
    assert _trained_text(datamodule, 0) == ["it is modal. [SEP]"]
    text = datamodule.tokenizer.decode(datamodule.splits["train"][0]["input_ids"])
    assert text.startswith("# # # system : answer briefly.") and "what is vim" not in text
    counts = datamodule.data_report["splits"]["train"]["sequences"]
    assert counts["dropped_too_long"] == 1
    assert datamodule.data_report["splits"]["train"]["truncated"] == 1
    assert any("1 sequence(s) left out" in w for w in datamodule.data_report["warnings"])
    dropped = _datamodule(
        tmp_path / "drop", [long_first, CHATS[1]], max_length=48, truncation="drop"
    )
    assert len(dropped.splits["train"]) == 1


def test_show_labels_marks_the_trained_tokens(tmp_path):
    datamodule = _datamodule(tmp_path, CHATS, show_labels=1)
    (shown,) = [n for n in datamodule.data_report["notes"] if n.startswith("trained tokens")]
    assert "### Assistant:\n⟦Editing text.[SEP]⟧\n\n### User:" in shown
    body = shown.split("\n", 1)[1]
    assert "⟦" not in body.split("### Assistant:")[0]


@pytest.mark.parametrize(
    ("rows", "options", "expected"),
    [
        (
            [{"messages": [{"role": "robot", "content": "hi"}]}],
            {},
            "row 1, turn 1: unknown role 'robot'",
        ),
        (
            [{"prompt": "Name an editor.", "completion": " "}],
            {"format": "prompt_completion"},
            "row 1: the completion ('completion') is empty",
        ),
        (
            [{"instruction": "Name an editor.", "output": "Vim."}],
            {"format": "prompt_completion", "prompt_template": "{instruction} {context}"},
            "context",
        ),
        (
            [{"messages": [{"role": "user", "content": "hi"}]}],
            {},
            "no assistant turn",
        ),
    ],
)
def test_bad_instruction_data_gets_one_clear_message(tmp_path, rows, options, expected):
    with pytest.raises(LmforgeError, match=None) as error:
        _datamodule(tmp_path, rows, **options)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_template_that_never_ends_answers_with_eos_is_refused(tmp_path):
    template = tmp_path / "no_eos.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(LmforgeError, match="never learn to stop"):
        _datamodule(tmp_path, CHATS, chat_template=str(template))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat_run")
    return tiny_run(root, "debian_chat_gpt2", "data.max_train_samples=64")


def _predicted_prompt(source: str, tmp_path: Path) -> str:
    """The text lmforge-predict generates from for 'What is vim for?' with `source`."""
    cfg = compose_config(
        [source, "input='What is vim for?'", "generate.max_new_tokens=5"], config_name="predict"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    (record,) = [json.loads(line) for line in predict(cfg).read_text().splitlines()]
    return record["generations"][0]["text"]


def test_predict_renders_inputs_with_the_runs_template(chat_run, tmp_path):
    prompt = _predicted_prompt(f"ckpt_path={chat_run / 'checkpoints' / 'last.ckpt'}", tmp_path)
    # The model saw the user turn and the generation prompt, as in training.
    assert prompt.startswith("# # # user : what is vim for? # # # assistant :")


def test_the_exported_tokenizer_carries_the_chat_template(chat_run, tmp_path):
    plain = Path(shipped_data("chat_templates/plain.jinja")).read_text()
    saved = AutoTokenizer.from_pretrained(chat_run / "tokenizer")
    assert saved.chat_template == plain and saved.eos_token == "[SEP]"
    cfg = compose_config(
        [f"ckpt_path={chat_run / 'checkpoints' / 'last.ckpt'}"], config_name="export"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "export")
    folder = export(cfg)
    exported = AutoTokenizer.from_pretrained(folder)
    assert exported.chat_template == plain
    messages = [{"role": "user", "content": "What is vim for?"}]
    assert exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "### User:\nWhat is vim for?\n\n### Assistant:\n"
    )
    info = json.loads((folder / "lmforge.json").read_text())
    assert info["format"] == "hf" and info["data_format"] == "messages"
    # The exported folder predicts through the same template as the checkpoint.
    prompt = _predicted_prompt(f"model_dir={folder}", tmp_path)
    assert prompt.startswith("# # # user : what is vim for? # # # assistant :")


def test_a_chat_run_scores_the_loss_and_the_generated_answers(chat_run):
    metrics = json.loads((chat_run / "metrics.json").read_text())
    assert metrics["task"] == "causal_lm"
    assert metrics["validation"]["val/loss"] > 0
    notes = metrics["data_checks"]["notes"]
    assert any(n.startswith("train: 64 sequences train") or "sequences train" in n for n in notes)
    # The model's own greedy answers to the 16 test prompts, scored one by one and on average.
    records = [
        json.loads(line) for line in (chat_run / "test_predictions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 16
    assert metrics["test"]["test/answer_f1"] == pytest.approx(
        sum(r["score"] for r in records) / 16, abs=0.01
    )
    assert 0 <= metrics["validation"]["val/answer_exact_match"] <= 100


def test_marked_text_of_a_prompt_completion_pair():
    tokenizer = AutoTokenizer.from_pretrained(BPE_TOKENIZER)
    text = "Q: hi\nA: hello" + tokenizer.eos_token
    encoded = encode_spans(tokenizer, text, [(len("Q: hi\nA:"), len(text))])
    # The byte-level BPE keeps the space in the answer's first token; its added BOS shows no text.
    assert marked_text(encoded) == "Q: hi\nA:⟦ hello</s>⟧"
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids.count(0) == 1


def test_an_eos_used_as_padding_still_trains_where_it_ends_an_answer(tmp_path):
    datamodule = _datamodule(tmp_path, CHATS)
    tokenizer = datamodule.tokenizer
    tokenizer.pad_token = tokenizer.eos_token  # the GPT-2 habit that masks EOS elsewhere
    batch = datamodule.build_collator()([datamodule.splits["train"][i] for i in range(2)])
    eos = tokenizer.eos_token_id
    short = batch["labels"][1]
    length = int(batch["attention_mask"][1].sum())
    assert int(short[length - 1]) == eos  # the answer's EOS trains
    assert bool((short[length:] == IGNORE_INDEX).all())  # the EOS padding does not
    assert bool((batch["input_ids"][1, length:] == eos).all())


def test_packed_training_gives_the_loss_and_gradients_of_unpacked(tmp_path, tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.tasks.language_modeling.instructions import pack_examples

    datamodule = _datamodule(tmp_path, [*CHATS, *CHATS[::-1]], max_length=64)
    examples = [datamodule.splits["train"][i] for i in range(4)]
    packed = pack_examples(datamodule.splits["train"], max_length=200)
    assert len(packed) == 1  # all four in one sequence
    assert packed[0]["position_ids"].count(0) == 4
    collator = datamodule.build_collator()
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).float()

    def loss_and_grads(batch: dict) -> tuple:
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    padded = collator(examples)
    packed_batch = collator([packed[0]])
    assert "attention_mask" not in packed_batch
    assert int((packed_batch["labels"] != IGNORE_INDEX).sum()) == int(
        (padded["labels"][:, 1:] != IGNORE_INDEX).sum()
    )
    loss, grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed_batch)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packing_fills_sequences_and_caps_count_examples(tmp_path):
    rows = [*CHATS] * 6
    datamodule = _datamodule(tmp_path, rows, packing=True, max_length=96, max_train_samples=10)
    train = datamodule.splits["train"]
    assert sum(r.count(0) for r in train["position_ids"]) == 10  # ten examples, capped first
    assert all(len(r) <= 96 for r in train["input_ids"]) and len(train) < 10
    assert len(datamodule.splits["validation"]) == 12  # evaluation stays unpacked


def test_the_packing_check_finds_a_model_whose_packed_examples_see_each_other(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    from lmforge.tasks.language_modeling.instructions import packing_leak
    from lmforge.tasks.language_modeling.module import PACKING_TOLERANCE, CausalLMModule

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert packing_leak(model, CausalLMModule.forward_options) < 1e-5
    # With a key/value cache transformers builds a plain causal mask: the examples leak.
    assert packing_leak(model, {"use_cache": True}) > PACKING_TOLERANCE


def test_a_llama_style_model_and_template_train_on_the_answers_and_pack_cleanly(tmp_path):
    """A tiny random Llama with a byte-level BPE tokenizer whose own chat template writes the
    BOS: the masks come out right and packed examples stay apart."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.tasks.language_modeling.instructions import packing_leak
    from lmforge.tasks.language_modeling.module import CausalLMModule

    folder = tmp_path / "llama"
    tokenizer = AutoTokenizer.from_pretrained(BPE_TOKENIZER)
    tokenizer.chat_template = LLAMA_STYLE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )
    model.save_pretrained(folder)
    datamodule = _datamodule(tmp_path / "data", CHATS, tokenizer=str(folder))
    assert datamodule.template == LLAMA_STYLE  # the tokenizer's own template is used
    assert _trained_text(datamodule, 1) == [" Reading mail. </s>"]
    ids = datamodule.splits["train"][1]["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
    batch = datamodule.build_collator()([datamodule.splits["train"][i] for i in range(2)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    assert model(**inputs, use_cache=False).loss.isfinite()
    assert packing_leak(model, CausalLMModule.forward_options) < 1e-5


def test_a_system_prompt_goes_first_where_a_conversation_has_none(tmp_path):
    datamodule = _datamodule(tmp_path, CHATS, system_prompt="Be brief.", show_labels=2)
    shown = [n for n in datamodule.data_report["notes"] if n.startswith("trained tokens")]
    # The second conversation had none: it gets the configured one; the first keeps its own.
    assert "### System:\nBe brief." in shown[1]
    assert "Be brief." not in shown[0] and "### System:\nAnswer briefly." in shown[0]


def test_prompt_completion_rows_through_the_chat_template_train_and_predict_as_chats(tmp_path):
    """data.apply_chat_template: a row is a user turn (the filled prompt template) and an
    assistant turn, tokenized exactly as the same conversation in messages format; predict
    renders an input the way training rendered the prompt before the scored answer."""
    from lmforge.tasks.language_modeling.predict import CausalLMPredictor

    rows = [{"description": "Vim is a modal text editor.", "synopsis": "Vi IMproved"}]
    pairs = _datamodule(
        tmp_path / "pairs",
        rows,
        format="prompt_completion",
        prompt_template="Summarize:\n{description}",
        completion_column="synopsis",
        apply_chat_template=True,
        system_prompt="Be brief.",
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarize:\nVim is a modal text editor."},
        {"role": "assistant", "content": "Vi IMproved"},
    ]
    chats = _datamodule(tmp_path / "chats", [{"messages": conversation}])
    for column in ("input_ids", "labels", "answer_span"):
        assert pairs.splits["train"][0][column] == chats.splits["train"][0][column]
    assert _trained_text(pairs, 0) == ["vi improved [SEP]"]
    # Without the option the same row is plain text: no template header.
    plain = _datamodule(
        tmp_path / "plain",
        rows,
        format="prompt_completion",
        prompt_template="Summarize:\n{description}",
        completion_column="synopsis",
    )
    assert plain.tokenizer.decode(plain.splits["train"][0]["input_ids"]).startswith("summarize :")

    settings = {**pairs.run_settings(), "max_length": 64}
    assert settings["apply_chat_template"] is True
    predictor = CausalLMPredictor(None, pairs.tokenizer, settings, None, "cpu")
    start = pairs.splits["validation"][0]["answer_span"][0]
    assert (
        predictor.prompt_ids("Vim is a modal text editor.", "input")
        == (pairs.splits["validation"][0]["input_ids"][:start])
    )
