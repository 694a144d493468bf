"""The documentation: the site builds strictly (no broken link or reference), the configuration
reference matches the schema and the configs, and every `lmforge-*` command line written in
README.md and docs/ composes, so a renamed key breaks a test before it breaks a user."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.helpers import REPO, compose_config

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


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every lmforge command in the code blocks of the docs, with
    the shell variables a block sets expanded, and in inline code that gives overrides."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            variables = dict(re.findall(r'^(\w+)="([^"]*)"', joined, flags=re.M))
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                for name, value in variables.items():
                    line = line.replace(f"${name}", value)
                words = line.split()
                # A diagram's `lmforge-train overrides` is no command line.
                if words and words[0] in CONFIGS and overrides_like(words[1:2]):
                    found.append((f"{path.relative_to(REPO)}: {line[:60]}", line))
        # Commands in table cells and running text: `lmforge-... key=value ...`.
        for line in re.findall(r"`(lmforge-[a-z]+ [^`]+)`", text):
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


def test_the_docs_name_commands_to_check():
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_composes(where, line):
    command = line.split(" ", 1)[0]
    compose_config(overrides_of(line), config_name=CONFIGS[command], return_hydra_config=True)


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
