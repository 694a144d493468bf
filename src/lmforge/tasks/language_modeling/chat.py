"""Instructions and conversations as tokens, with a mask of the tokens a causal LM trains on.

A conversation is rendered with a chat template (the tokenizer's own jinja template, a user's
file, or lmforge's plain one for tokenizers without one) and tokenized once; the trained
tokens are found by rendering it turn by turn: the text an assistant turn adds after the
prompt that asks for it (the conversation up to it, with the generation prompt) is what the
model writes, end-of-turn token included. This works for any template whose renderings of a
conversation's beginnings are prefixes of the whole, with no `{% generation %}` markers
needed. A prompt/completion pair is the prompt text followed by the completion and EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lmforge.config.resources import shipped_data
from lmforge.errors import LmforgeError

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names -> roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
TRAIN_ON = ("assistant", "last", "all")
# The template of tokenizers without their own (see resources/chat_templates/README.md).
PLAIN_TEMPLATE = "chat_templates/plain.jinja"

Message = dict[str, str]
Span = tuple[int, int]


def chat_template_of(tokenizer: PreTrainedTokenizerBase, path: str | None) -> str:
    """The template text: the file `path` (data.chat_template), else the tokenizer's own,
    else lmforge's plain template."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise LmforgeError(
                f"data.chat_template={path!r}: no such file; expected a jinja chat template "
                "(or null: the tokenizer's own, else lmforge's plain template)."
            )
        return file.read_text(encoding="utf-8")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return own
    return Path(shipped_data(PLAIN_TEMPLATE)).read_text(encoding="utf-8")


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    template: str,
    add_generation_prompt: bool = False,
) -> str:
    """The text of a conversation (or its beginning) under `template`."""
    try:
        text = tokenizer.apply_chat_template(
            list(messages),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as err:
        raise LmforgeError(
            f"The chat template could not render a conversation of roles "
            f"{[m['role'] for m in messages]}: {type(err).__name__}: {err}"
        ) from err
    return str(text)


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    template: str,
    train_on: str,
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans that train: each assistant turn's
    text after its prompt (all turns, or the last with `train_on=last`), or everything."""
    full = render(tokenizer, messages, template)
    if train_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns[-1:] if train_on == "last" else turns:
        prompt = render(tokenizer, messages[:i], template, add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], template)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise LmforgeError(
                "The chat template renders a conversation's beginning differently from the "
                "whole (the text up to an assistant turn is not a prefix of the conversation), "
                "so the tokens each assistant turn adds cannot be found. Give a template that "
                "renders earlier turns the same way in longer conversations "
                "(data.chat_template=path.jinja)."
            )
        spans.append((len(prompt), len(through)))
    return full, spans


@dataclass
class Encoded:
    """A rendered example: its text, token ids, which of them train, and each token's
    character span in the text ((0, 0) for an added BOS)."""

    text: str
    input_ids: list[int]
    trained: list[bool]
    offsets: list[tuple[int, int]]


def encode_spans(tokenizer: PreTrainedTokenizerBase, text: str, spans: Sequence[Span]) -> Encoded:
    """Tokenize `text` once; a token trains when it starts inside a span. The tokenizer's BOS
    is added only when it adds one and the text does not already start with it (templates
    that write it themselves), so there is never a double BOS."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    trained = [any(s <= start < e for s, e in spans) for start, _ in offsets]
    bos = tokenizer.bos_token_id
    if bos is not None and adds_bos(tokenizer) and (not ids or ids[0] != bos):
        ids, trained, offsets = [bos, *ids], [False, *trained], [(0, 0), *offsets]
    return Encoded(text, ids, trained, offsets)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text by itself."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def drop_first_turns(messages: Sequence[Message]) -> list[Message] | None:
    """The conversation without its first exchange (the first user turn and the answers up to
    the next user turn); system messages stay. None when no assistant turn would be left."""
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    first_user = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if first_user is None:
        return None
    following = next(
        (i for i in range(first_user + 1, len(rest)) if rest[i]["role"] == "user"), len(rest)
    )
    kept = rest[following:]
    if not any(m["role"] == "assistant" for m in kept):
        return None
    return [*system, *kept]


def as_messages(value: Any, where: str, column: str, sharegpt: bool) -> list[Message]:
    """A row's conversation as role/content messages, checked: a list of {role, content}
    (ShareGPT: {from, value}), known roles, text content, at least one assistant turn."""
    if not isinstance(value, list) or not value:
        raise LmforgeError(
            f"{where}: column {column!r} holds {str(value)[:60]!r}; expected a list of "
            + (
                '{"from": ..., "value": ...} turns (ShareGPT).'
                if sharegpt
                else '{"role": ..., "content": ...} messages.'
            )
        )
    messages = []
    for turn, item in enumerate(value, 1):
        role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
        if not isinstance(item, dict) or role_key not in item or text_key not in item:
            raise LmforgeError(
                f"{where}, turn {turn}: {str(item)[:60]!r} is not a {{{role_key!r}, "
                f"{text_key!r}}} object."
            )
        role = str(item[role_key])
        if sharegpt:
            if role not in SHAREGPT_ROLES:
                raise LmforgeError(
                    f"{where}, turn {turn}: unknown speaker {role!r}; ShareGPT turns come from "
                    f"{', '.join(SHAREGPT_ROLES)}."
                )
            role = SHAREGPT_ROLES[role]
        elif role not in ROLES:
            raise LmforgeError(
                f"{where}, turn {turn}: unknown role {role!r}; expected one of {', '.join(ROLES)}."
            )
        content = item[text_key]
        if not isinstance(content, str):
            raise LmforgeError(
                f"{where}, turn {turn}: the {role} text is {type(content).__name__}, expected "
                "a string."
            )
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError(
            f"{where}: the conversation has no assistant turn, so nothing in it would train."
        )
    for turn, m in enumerate(messages, 1):
        if m["role"] == "assistant" and not m["content"].strip():
            raise LmforgeError(
                f"{where}, turn {turn}: the assistant turn is empty; the model would learn to "
                "answer with nothing."
            )
    return messages


def marked_text(encoded: Encoded) -> str:
    """The example's text with every run of trained tokens between ⟦ and ⟧ (the text as
    rendered, so line breaks and case show as the model reads them)."""
    pieces, inside, position = [], False, 0
    for (start, end), trained in zip(encoded.offsets, encoded.trained, strict=True):
        if end <= start:
            continue
        if trained != inside:
            # Space between the runs stays outside the markers (no token holds it).
            gap = encoded.text[position:start]
            pieces.extend([gap, "⟦"] if trained else ["⟧", gap])
            position, inside = start, trained
        pieces.append(encoded.text[position:end])
        position = end
    if inside:
        pieces.append("⟧")
    pieces.append(encoded.text[position:])
    return "".join(pieces)
