"""Train the tokenizer shipped with the Debian translations (English and German, cased).

    python scripts/build_debian_translation_tokenizer.py

Reads src/lmforge/resources/debian_translations/train.jsonl (both sides of every pair; never
validation or test) and writes a byte-level BPE tokenizer with the `tokenizers` library to
src/lmforge/resources/debian_translations/tokenizer/, loadable with
`transformers.AutoTokenizer.from_pretrained`. The embedded MiniLM tokenizer is uncased English
WordPiece and strips accents, so it cannot write German; this one keeps case and every
character. Sequences are `<s> text </s>`, as BART expects. Deterministic for the same input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

DATA = Path(__file__).resolve().parents[1] / "src/lmforge/resources/debian_translations"
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]


def texts(path: Path) -> list[str]:
    rows = [json.loads(line)["translation"] for line in path.read_text().splitlines() if line]
    return [text for row in rows for text in row.values()]


def build(train: Path, out: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(train), trainer=trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.jsonl")
    parser.add_argument("--out", type=Path, default=DATA / "tokenizer")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    fast = build(args.train, args.out, args.vocab_size)
    print(f"wrote {args.out}: {len(fast)} tokens")


if __name__ == "__main__":
    main()
