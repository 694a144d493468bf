"""Checks of a command line before Hydra runs it.

Hydra reports an unknown key as "Key 'lrr' is not in struct" over several lines, and an
unknown option of an optional group (experiment=typo) not at all: the run silently goes on
without it. Before Hydra writes anything, the console scripts compose the config once the same
way and turn such mistakes into one paragraph with the closest valid key or option, and refuse
run directories that must not be written to. `--help`, `--info` and other Hydra flags that
do not run a job, and command lines naming another config source, go straight to Hydra.
"""

from __future__ import annotations

import difflib
import zipfile
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from lmforge.config.resources import config_dir
from lmforge.config.validation import group_options, process_rank
from lmforge.errors import LmforgeError
from lmforge.runtime.rundir import (
    check_resumable,
    check_run_dir_is_free,
    is_deepspeed_checkpoint,
)

# Hydra flags after which no job runs, or that load configs from elsewhere: Hydra handles them.
HANDS_OFF_FLAGS = {
    "--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc",
    "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
    "--experimental-rerun",
}  # fmt: skip
# Hydra flags followed by a value that is not an override.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
MULTIRUN_FLAGS = {"-m", "--multirun"}
SHOW_CONFIG_FLAGS = {"--cfg", "-c"}
# The commands whose run needs a checkpoint (`ckpt_path`).
CHECKPOINT_COMMANDS = {"eval", "export", "predict", "serve"}


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Raise LmforgeError for a command line that Hydra would refuse unclearly or that would
    write into another run's directory; return quietly for everything else."""
    if process_rank() > 0 or any(a.split("=", 1)[0] in HANDS_OFF_FLAGS for a in argv):
        # Ranks > 0 are processes Lightning started with rank 0's command line.
        return
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    lines = _override_lines(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as err:
        raise LmforgeError(f"Cannot read the overrides: {_one_paragraph(err)}") from err
    if not any(o.key_or_group.startswith("hydra.searchpath") for o in overrides):
        # (With an extra search path, options may live outside conf/: composing decides.)
        _check_group_choices(overrides)
    cfg = _compose(config_name, [_single_value(o) for o in overrides])
    if cfg is None or any(a.split("=", 1)[0] in SHOW_CONFIG_FLAGS for a in argv):
        return  # --cfg only prints the config: no run, so nothing else to check
    if config_name == "train" and cfg.get("resume"):
        check_resumable(str(cfg.resume))
    elif not multirun and (run_dir := _explicit(overrides, "hydra.run.dir")):
        check_run_dir_is_free(Path(run_dir).expanduser(), "hydra.run.dir")
    _check_required(config_name, cfg)
    if config_name in CHECKPOINT_COMMANDS:
        _check_checkpoint_argument(cfg)


def _override_lines(argv: list[str]) -> list[str]:
    lines, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in VALUE_FLAGS:
            skip_next = True
        elif not arg.startswith("-"):
            lines.append(arg)
    return lines


def _single_value(override: Override) -> str:
    """The override as one composable value: a sweep (`lr=1e-3,1e-4`) gives its first one."""
    if not override.is_sweep_override():
        # The parser records the line of every override it parses.
        return cast(str, override.input_line)
    try:
        first = next(iter(override.sweep_string_iterator()))
    except (HydraException, StopIteration, TypeError, ValueError):
        first = None  # a range/interval for a search: any value of it composes the same keys
    if first is None:
        return ""
    return f"{override.get_key_element()}={first}"


def _explicit(overrides: list[Override], key: str) -> str | None:
    """The literal value a command line gives `key`, if it gives one."""
    for override in overrides:
        if override.key_or_group == key and not override.is_sweep_override():
            value = override.value()
            if isinstance(value, str) and "${" not in value:
                return value
    return None


def _check_group_choices(overrides: list[Override]) -> None:
    """`group=option` must name a file of conf/<group>/: Hydra skips a missing option of an
    optional group (experiment, debug, hparams_search) without a word."""
    for override in overrides:
        group = override.key_or_group
        if override.type == OverrideType.DEL or "." in group or group.startswith("hydra"):
            continue
        folder = config_dir() / group
        value = override.value()
        if not folder.is_dir() or not isinstance(value, str) or override.is_sweep_override():
            continue
        if value.startswith("_") or not (folder / f"{value}.yaml").is_file():
            raise LmforgeError(_unknown_option(group, value, sorted(group_options(group))))


def _unknown_option(group: str, value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    hint = f" Did you mean {group}={close[0]}?" if close else ""
    return (
        f"{group}={value}: there is no {group} option {value!r}; expected one of "
        f"{', '.join(options)}.{hint}"
    )


def _compose(config_name: str, lines: list[str]) -> DictConfig | None:
    """The config Hydra will compose, or one clear error; None when Hydra should decide."""
    lines = [line for line in lines if line]
    try:
        return _compose_once(config_name, lines)
    except MissingConfigException as err:
        group, _, value = str(err.missing_cfg_file or "").rpartition("/")
        if group and err.options:
            raise LmforgeError(_unknown_option(group, value, list(err.options))) from err
        raise LmforgeError(_one_paragraph(err)) from err
    except ConfigCompositionException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
            raise LmforgeError(_unknown_key(config_name, lines, str(cause.full_key))) from err
        raise LmforgeError(_one_paragraph(err)) from err
    except HydraException:
        return None


def _compose_once(config_name: str, lines: list[str]) -> DictConfig:
    with initialize_config_dir(
        version_base="1.3", config_dir=str(config_dir()), job_name=config_name
    ):
        return compose(config_name=config_name, overrides=lines, return_hydra_config=True)


def _unknown_key(config_name: str, lines: list[str], full_key: str) -> str:
    """Name the closest valid key for an override of a key the config does not have."""
    line = next((ln for ln in lines if ln.split("=", 1)[0].lstrip("+~") == full_key), None)
    line = line or next((ln for ln in lines if ln.startswith(full_key)), full_key)
    key = line.split("=", 1)[0]
    value = line.split("=", 1)[1] if "=" in line else ""
    others = [ln for ln in lines if ln != line]
    try:
        cfg = _compose_once(config_name, others)
    except HydraException:
        cfg = None
    group = key.split(".", 1)[0]
    choice = cfg.hydra.runtime.choices.get(group) if cfg is not None and "." in key else None
    if choice and (config_dir() / group).is_dir():
        # A key of another option of the same group (finetune.r with finetune=full).
        owners = [o for o, keys in group_options(group).items() if _has(keys, key)]
        if owners and choice not in owners:
            return (
                f"{key} applies to {group}={'/'.join(owners)}; the run uses {group}={choice}. "
                f"Choose one of those ({group}={owners[0]} {line}) or leave {key} out."
            )
    keys = _all_keys(cfg) if cfg is not None else []
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.7)
    parent = key.rpartition(".")[0]
    siblings = sorted(
        name
        for k in keys
        if k.rpartition(".")[0] == parent and not (name := k.rpartition(".")[2]).startswith("_")
    )
    hint = f" Did you mean {close[0]}?" if close else ""
    where = f" Keys of {parent}: {', '.join(siblings)}." if parent and siblings else ""
    return (
        f"{key} is not a key of the {config_name} config (from the override {line}).{hint}"
        f"{where} To add a key the config does not have, write +{key}={value}."
    )


def _has(keys: dict[str, Any], dotted: str) -> bool:
    """Whether an option's keys hold `dotted` (its first part, the group, left out)."""
    node: Any = keys
    for part in dotted.split(".")[1:]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _all_keys(cfg: DictConfig) -> list[str]:
    """Every key of the config as a dotted path, without resolving any interpolation."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if prefix == "" and name == "hydra":
                    continue
                path = f"{prefix}{name}"
                keys.append(path)
                walk(value, f"{path}.")

    walk(plain, "")
    return keys


def _one_paragraph(err: Exception) -> str:
    """Hydra's message and its cause on one line."""
    text = " ".join(str(err).split())
    if err.__cause__ is not None:
        text += " (" + " ".join(str(err.__cause__).split()) + ")"
    return text


# How to fill in the `???` keys of the commands' configs.
REQUIRED_EXAMPLES = {
    "ckpt_path": "ckpt_path=<run dir>/checkpoints/best.ckpt",
    "input": "input=texts.csv (or input='one text')",
}


def _check_required(command: str, cfg: DictConfig) -> None:
    """Keys the config leaves as ??? must be given (Hydra would stop at their first read)."""
    missing = [str(k) for k in cfg if k != "hydra" and OmegaConf.is_missing(cfg, k)]
    if missing:
        examples = " ".join(REQUIRED_EXAMPLES.get(k, f"{k}=...") for k in missing)
        raise LmforgeError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: "
            f"lmforge-{command} {examples} (see conf/{command}.yaml)."
        )


def _check_checkpoint_argument(cfg: DictConfig) -> None:
    """A checkpoint that is not there is named before Hydra creates a run directory."""
    path = cfg.get("ckpt_path")
    if not path:
        return  # predict may take model_dir instead; it checks the pair itself
    file = Path(str(path)).expanduser()
    if is_deepspeed_checkpoint(file):
        return  # gathered into one file when it is read
    if file.is_dir():
        raise LmforgeError(
            f"ckpt_path={str(path)!r} is a directory; expected a checkpoint file such as "
            f"{file / 'checkpoints' / 'best.ckpt'}."
        )
    if not file.is_file():
        raise LmforgeError(
            f"ckpt_path={str(path)!r}: no such checkpoint file (expected "
            "<run dir>/checkpoints/best.ckpt or last.ckpt of an lmforge-train run)."
        )
    if not zipfile.is_zipfile(file):
        kind = f" (it is a {file.suffix} file)" if file.suffix not in ("", ".ckpt") else ""
        raise LmforgeError(
            f"ckpt_path={str(path)!r} is not a checkpoint: lmforge-train saves checkpoints in "
            f"torch's zip format (<run dir>/checkpoints/best.ckpt), and this file is not one{kind}."
        )
