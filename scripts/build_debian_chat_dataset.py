"""Build the shipped chat and preference data sets: questions about Debian packages answered
from their records.

Reads lmforge's shipped summarization data (`src/lmforge/resources/debian_summaries/`: each
package's synopsis and long description, written by Debian maintainers) and writes one
conversation per package, keeping that data set's train/validation/test split:

    python scripts/build_debian_chat_dataset.py --out src/lmforge/resources/debian_chat \
        --preferences-out src/lmforge/resources/debian_preferences

Rules (deterministic: the same input gives byte-identical files):
- Every conversation asks "What is <package> for?"; the answer is the package's synopsis, as
  Debian writes it, with its first letter capitalised and a full stop added.
- Every second package (by position in its split) goes on: "Tell me more." answered by the
  first paragraph of the long description (packages whose first paragraph is over 80 words
  keep the single exchange).
- Every third package's conversation starts with the system message
  "You answer questions about Debian packages."

Preference pairs (one per package): the prompt "What is <package> for?", the package's own
answer (chosen) and the answer of the package `REJECTED_OFFSET` places later in the same split
(rejected; the next one on whose answer differs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = ("train", "validation", "test")
SYSTEM = "You answer questions about Debian packages."
MAX_PARAGRAPH_WORDS = 80
REJECTED_OFFSET = 7


def sentence(text: str) -> str:
    """The synopsis as an answer: first letter capitalised, ending in a full stop."""
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def conversation(row: dict, position: int) -> dict:
    messages = []
    if position % 3 == 0:
        messages.append({"role": "system", "content": SYSTEM})
    messages.append({"role": "user", "content": f"What is {row['package']} for?"})
    messages.append({"role": "assistant", "content": sentence(row["synopsis"])})
    first = row["description"].split("\n")[0].strip()
    if position % 2 == 1 and first and len(first.split()) <= MAX_PARAGRAPH_WORDS:
        messages.append({"role": "user", "content": "Tell me more."})
        messages.append({"role": "assistant", "content": first})
    return {"id": row["package"], "messages": messages}


def preference(rows: list[dict], position: int) -> dict:
    """The package's own synopsis against another package's, for one prompt."""
    chosen = sentence(rows[position]["synopsis"])
    for step in range(REJECTED_OFFSET, REJECTED_OFFSET + len(rows)):
        other = rows[(position + step) % len(rows)]
        if sentence(other["synopsis"]).lower() != chosen.lower():
            break
    return {
        "id": rows[position]["package"],
        "prompt": f"What is {rows[position]['package']} for?",
        "chosen": chosen,
        "rejected": sentence(other["synopsis"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="src/lmforge/resources/debian_summaries")
    parser.add_argument("--out", default="src/lmforge/resources/debian_chat")
    parser.add_argument("--preferences-out", default="src/lmforge/resources/debian_preferences")
    args = parser.parse_args()
    out, preferences_out = Path(args.out), Path(args.preferences_out)
    out.mkdir(parents=True, exist_ok=True)
    preferences_out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = [
            json.loads(line)
            for line in (Path(args.source) / f"{split}.jsonl").read_text().splitlines()
        ]
        chats = [conversation(row, i) for i, row in enumerate(rows)]
        two = sum(1 for c in chats if len([m for m in c["messages"] if m["role"] == "user"]) == 2)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for chat in chats:
                f.write(json.dumps(chat, ensure_ascii=False) + "\n")
        print(f"{split}: {len(chats)} conversations, {two} with two exchanges")
        with open(preferences_out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for position in range(len(rows)):
                f.write(json.dumps(preference(rows, position), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
