"""The documentation: the site builds strictly (no broken link or reference), the configuration
reference matches the schema and the configs, and every `lmforge-*` command line written in
README.md and docs/ composes, so a renamed key breaks a test before it breaks a user."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from tests.helpers import (
    REPO,
    TOPICS,
    compose_config,
    make_conll_sentences,
    make_rows,
    write_conll,
    write_csv,
)

# The config each command composes (lmforge-report takes a folder, not overrides).
CONFIGS = {
    "lmforge-train": "train",
    "lmforge-check": "train",
    "lmforge-eval": "eval",
    "lmforge-predict": "predict",
    "lmforge-serve": "serve",
    "lmforge-export": "export",
}


# Flags of the Hydra command line that take a value (the value is no override).
FLAGS_WITH_VALUES = ("--cfg", "-c", "--package", "-p", "--info", "-i")


def overrides_like(words: list[str]) -> bool:
    return all("=" in w or w.startswith("-") or w in ("...", "#") for w in words)


DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def code_block_lines(path: Path) -> list[str]:
    """The shell lines of a page's code blocks as a user would type them: continued lines
    joined, the shell variables the block sets expanded, environment settings before the
    command (`WANDB_MODE=offline lmforge-...`) left out."""
    lines = []
    text = path.read_text(encoding="utf-8")
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        variables = dict(re.findall(r'^(\w+)="([^"]*)"', joined, flags=re.M))
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            lines.append(re.sub(r"^([A-Z_][A-Z0-9_]*=\S+\s+)+", "", line))
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every lmforge command in the code blocks of the docs, and in
    inline code that gives overrides."""
    found = []
    for path in DOC_PAGES:
        for line in code_block_lines(path):
            words = line.split()
            # A diagram's `lmforge-train overrides` is no command line.
            if words and words[0] in CONFIGS and overrides_like(words[1:2]):
                found.append((f"{path.relative_to(REPO)}: {line[:60]}", line))
        # Commands in table cells and running text: `lmforge-... key=value ...`.
        for line in re.findall(r"`(lmforge-[a-z]+ [^`]+)`", path.read_text(encoding="utf-8")):
            line = re.sub(r"<[^<>]+>", "PLACEHOLDER", line)
            if line.split(" ", 1)[0] in CONFIGS and overrides_like(line.split()[1:]):
                found.append((f"{path.relative_to(REPO)}: {line[:60]}", line))
    return found


def overrides_of(line: str) -> list[str]:
    """The Hydra overrides of a command line: shell words up to a comment or a pipe, `-m` and
    `--flags` left out, a sweep's first value standing for the sweep."""
    # A placeholder (`<time>`, `<hub corpus>`) stands for a value the user gives.
    line = re.sub(r"<[^<>]+>", "PLACEHOLDER", line)
    words, skip = [], False
    for word in shlex.split(line, comments=True)[1:]:
        if word in ("&&", "|", ";", ">", "2>&1"):
            break
        if skip or word == "...":
            skip = False
            continue
        if word.startswith("-"):
            skip = word in FLAGS_WITH_VALUES
            continue
        words.append(word)
    parsed = OverridesParser.create().parse_overrides(words)
    out = []
    for override, word in zip(parsed, words, strict=True):
        if override.is_sweep_override():
            if override.is_interval_sweep():
                first = str(override.value().start)
            else:
                first = next(iter(override.sweep_string_iterator()))
            word = f"{override.get_key_element()}={first}"
        out.append(word)
    return out


COMMANDS = documented_commands()


def documented_reports() -> list[tuple[str, str]]:
    """(where, command line) of every `lmforge-report` line in the code blocks of the docs."""
    return [
        (f"{path.relative_to(REPO)}: {line[:60]}", line)
        for path in DOC_PAGES
        for line in code_block_lines(path)
        if line.startswith("lmforge-report ")
    ]


REPORTS = documented_reports()


def test_the_docs_name_commands_to_check():
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_composes(where, line):
    command = line.split(" ", 1)[0]
    compose_config(overrides_of(line), config_name=CONFIGS[command], return_hydra_config=True)


@pytest.mark.parametrize(("where", "line"), REPORTS, ids=[w for w, _ in REPORTS])
def test_every_documented_report_runs(where, line, tiny_full_run, tmp_path):
    """The documented lmforge-report line, its folder standing for a finished run's, its
    flags as written (a renamed flag or a metric runs do not write fails here)."""
    from lmforge.cli import report_main

    run_dir, _ = tiny_full_run
    words = shlex.split(line, comments=True)[1:]
    argv, i = [], 0
    while i < len(words):
        if words[i] == "--out":
            argv += ["--out", str(tmp_path / words[i + 1])]
            i += 2
        elif words[i].startswith("--"):
            argv += words[i : i + 2]
            i += 2
        else:
            argv.append(str(run_dir))
            i += 1
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "report")]
    report_main(argv)
    out = Path(argv[argv.index("--out") + 1])
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()


def test_the_docs_show_reports():
    assert len(REPORTS) >= 4


def test_the_generated_pages_are_up_to_date():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_docs_pages.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_site_builds_strictly(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()


# --- The README's "on your own data" commands, run on a file in the layout its name promises ---


def _rows(n: int) -> list[dict[str, str]]:
    return make_rows(n, seed=7)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _corpus(path: Path) -> None:
    # Enough text that the carved 5% splits hold a block of 128 tokens.
    path.write_text("".join(r["text"] + ".\n" for r in _rows(600)), encoding="utf-8")


def _conll(path: Path) -> None:
    write_conll(path, make_conll_sentences(60, 7))


def _classification(path: Path) -> None:
    write_csv(path, _rows(120))


def _chats(path: Path) -> None:
    _jsonl(
        path,
        [
            {
                "messages": [
                    {"role": "user", "content": f"Which topic is this: {r['text']}?"},
                    {"role": "assistant", "content": r["label"]},
                ]
            }
            for r in _rows(60)
        ],
    )


def _preferences(path: Path) -> None:
    _jsonl(
        path,
        [
            {"prompt": f"Topic of: {r['text']}", "chosen": r["label"], "rejected": "no idea"}
            for r in _rows(60)
        ],
    )


def _summaries(path: Path) -> None:
    # The usual layout of summarization data (XSum): document and summary.
    _jsonl(
        path, [{"document": r["text"] + " " + r["text"], "summary": r["label"]} for r in _rows(60)]
    )


def _translations(path: Path) -> None:
    # The layout of the WMT sets on the hub: one dict of language -> text per row.
    _jsonl(path, [{"translation": {"en": r["text"], "de": r["label"]}} for r in _rows(60)])


def _arc(path: Path) -> None:
    # ARC as published: choices as {"text": [...], "label": [...]}, the answer in answerKey.
    names = list(TOPICS)
    _jsonl(
        path,
        [
            {
                "id": f"q{i}",
                "question": f"Which topic is this: {r['text']}?",
                "choices": {"text": names, "label": ["A", "B", "C"]},
                "answerKey": "ABC"[names.index(r["label"])],
            }
            for i, r in enumerate(_rows(60))
        ],
    )


def _squad(path: Path) -> None:
    # The SQuAD v1.1 release: articles of paragraphs of questions.
    paragraphs = []
    for i, r in enumerate(_rows(60)):
        context = f"{r['text']}. This text is about {r['label']}."
        answer = {"text": r["label"], "answer_start": context.rindex(r["label"])}
        question = {"id": f"q{i}", "question": "What is this text about?", "answers": [answer]}
        paragraphs.append({"context": context, "qas": [question]})
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})
    )


# What a user's file of each README row holds, by the experiment (or model) the row names.
USER_FILES = {
    "debian_topics_minilm": _classification,
    "model=prompt_classification": _classification,
    "debian_ner_minilm": _conll,
    "debian_lm_gpt2_scratch": _corpus,
    "debian_chat_smollm2": _chats,
    "debian_dpo_gpt2": _preferences,
    "debian_mlm_minilm": _corpus,
    "debian_summarize_minilm": _summaries,
    "debian_translate_en_de": _translations,
    "debian_mc_minilm": _arc,
    "debian_qa_minilm": _squad,
}


def own_data_rows() -> list[tuple[str, str]]:
    """(shipped experiment, command) of each row of README's table of task families."""
    rows = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("`lmforge-train"):
            rows.append((re.findall(r"`(\w+)`", cells[1])[0], cells[2].strip("`")))
    return rows


OWN_DATA = own_data_rows()


def test_the_readme_lists_every_family_with_a_command_for_own_data():
    assert len(OWN_DATA) == len(USER_FILES)


@pytest.mark.parametrize(("experiment", "line"), OWN_DATA, ids=[e for e, _ in OWN_DATA])
def test_each_family_row_of_the_readme_reads_a_users_file(experiment, line, tmp_path):
    """The row's command, as written, prepares a file in the public layout its name stands
    for (SQuAD's JSON, ARC's jsonl, CoNLL...), with validation and test carved from it."""
    from lmforge.check import check_data

    overrides = overrides_of(line)
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("data.train_file="))
    key = next((k for k in USER_FILES if k in line), "debian_topics_minilm")
    USER_FILES[key](tmp_path / name)
    overrides = [
        o if not o.startswith("data.train_file=") else f"data.train_file={tmp_path / name}"
        for o in overrides
    ]
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.data.cache_dir = str(tmp_path / "cache")
    report = check_data(cfg)
    splits = report["splits"]
    assert splits["train"]["examples"] > 0, report
    assert str(tmp_path / name) in splits["train"]["source"]
    for split in ("validation", "test"):
        assert splits[split]["source"].startswith("carved from"), splits[split]
