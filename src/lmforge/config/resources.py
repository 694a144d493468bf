"""Where lmforge finds its configs, shipped data and embedded model, and the config resolvers.

Kept free of heavy imports: it runs while Hydra composes a config, before torch is loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
RESOURCES_DIR = PACKAGE_DIR / "resources"

# Names tried, in order, for a split file that sits beside the training file.
SPLIT_ALIASES = {
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


def config_dir() -> Path:
    """The directory holding `train.yaml` and the config groups.

    An installed wheel carries it as `lmforge/conf`; a checkout (editable install) keeps it as
    `conf/` at the top of the repository, two levels above this file.
    """
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise LmforgeError(
        f"lmforge could not find its configs: neither {PACKAGE_DIR / 'conf'} (installed wheel) "
        f"nor {PACKAGE_DIR.parent.parent / 'conf'} (checkout) holds train.yaml. Reinstall the "
        "package with `pip install -e .` from the checkout or `pip install lmforge`."
    )


def shipped_data(relative: str) -> str:
    """Absolute path of a data file shipped inside the package (under `lmforge/resources/`)."""
    path = RESOURCES_DIR / relative
    if not path.exists():
        raise LmforgeError(f"shipped data file {relative!r} not found under {RESOURCES_DIR}.")
    return str(path)


def embedded_model_path(name: str = "") -> str:
    """Folder of an embedded pretrained model (`${lmforge.embedded_model:}`: the MiniLM encoder;
    `${lmforge.embedded_model:smollm2-135m-instruct}`: the causal LM, converted on first use)."""
    from lmforge.config.embedded import model_source

    return model_source(name or "all-minilm-l6-v2")


def sibling_split(train_file: str | None, split: str) -> str | None:
    """The file (or folder) for `split` beside `train_file`, found by swapping "train" in its
    name.

    `data/train.csv` gives `data/validation.csv` (or valid/val/dev) and `data/test.csv`;
    `reviews_train.jsonl` gives `reviews_test.jsonl`; a folder `imdb/train/` gives `imdb/test/`,
    and a folder holding `train/` (`data.train_file=imdb`) gives its `test/` and `validation/`.
    None when no such file exists, in which case the datamodule carves the split from the
    training data and says so.
    """
    if not train_file:
        return None
    path = Path(str(train_file))
    if (path / "train").is_dir():
        path = path / "train"
    if "train" not in path.name:
        return None
    head, _, tail = path.name.rpartition("train")
    for alias in SPLIT_ALIASES[split]:
        candidate = path.with_name(f"{head}{alias}{tail}")
        if candidate.is_file() or (path.is_dir() and candidate.is_dir()):
            return str(candidate)
    return None


def train_split(train_file: str | None) -> str | None:
    """The training data: `train_file`, or its `train/` folder when it holds one (the layout
    `<dir>/{train,test}/<class>/<file>`)."""
    if train_file and (Path(str(train_file)) / "train").is_dir():
        return str(Path(str(train_file)) / "train")
    return train_file


def run_dir(resume: str | None, default: str) -> str:
    """The run directory: the resumed run's own directory, else a new one that does not exist.

    A run never writes into another run's files, so when `default` is already taken (two runs
    started within the same second) a numeric suffix makes it unique.
    """
    if resume:
        return str(Path(str(resume)).expanduser().resolve())
    shared = slurm_run_dir(default)
    if shared is not None:
        return shared
    candidate, n = Path(default), 1
    while candidate.exists() and any(candidate.iterdir()):
        candidate = Path(f"{default}_{n}")
        n += 1
    return str(candidate)


def slurm_run_dir(default: str) -> str | None:
    """The directory every task of a multi-task SLURM job step shares, or None outside one.

    SLURM starts the same command once per task, a moment apart: a timestamped name could
    differ between them, and a later task would find the first one's files. They share one
    directory named after the job (and step) instead, beside where `default` would be.
    """
    tasks, job = os.environ.get("SLURM_NTASKS", ""), os.environ.get("SLURM_JOB_ID")
    if not (job and tasks.isdigit() and int(tasks) > 1):
        return None
    step = os.environ.get("SLURM_STEP_ID")
    return str(Path(default).parent / (f"slurm-{job}" + (f".{step}" if step else "")))


def hydra_subdir(resume: str | None, timestamp: str) -> str:
    """Where Hydra records the composed config: a resumed run keeps its original record."""
    return f".hydra/resume_{timestamp}" if resume else ".hydra"


def run_id(output_dir: str) -> str:
    """A logger run id derived from the run directory: unique per run, the same on resume."""
    digest = hashlib.sha256(str(Path(str(output_dir)).resolve()).encode()).hexdigest()
    return f"{Path(str(output_dir)).name}-{digest[:8]}".replace("_", "-")


def multirun_hydra() -> DictConfig | None:
    """Hydra's own config of this job when it is one job of a `-m` sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    # Typed as the HydraConf dataclass; at run time it is the DictConfig Hydra built from it.
    hydra = cast(DictConfig, HydraConfig.get())
    return hydra if hydra.mode == RunMode.MULTIRUN else None


def sweep_group(task_name: str) -> str | None:
    """The logger group of a job: its sweep's name in a Hydra multirun, None in a single run.

    All jobs of one `-m` sweep share its directory (`outputs/train/multiruns/<time>`), so the
    directory's name after the task name (`train-2026-11-22_10-00-00`) groups them and tells
    one sweep from another.
    """
    hydra = multirun_hydra()
    return None if hydra is None else f"{task_name}-{Path(str(hydra.sweep.dir)).name}"


def job_name(task_name: str) -> str:
    """A readable logger run name: the task name, and the job number within a sweep."""
    hydra = multirun_hydra()
    return task_name if hydra is None else f"{task_name}-{hydra.job.num}"


def family_metric(model_target: str) -> str:
    """`optimized_metric`'s default: the validation metric of the task family that
    `model._target_` trains (val/loss for a class lmforge does not know)."""
    from lmforge.tasks import family_of_module

    family = family_of_module(model_target)
    return f"val/{family.optimized_metric if family else 'loss'}"


def metric_mode(model_target: str, metric: str) -> str:
    """`optimized_mode`'s default: min where `metric` improves downwards for that family
    (losses, perplexity), max elsewhere."""
    from lmforge.tasks import family_of_module

    family = family_of_module(model_target)
    name = str(metric).partition("/")[2] or str(metric)
    lower = family.lower_is_better if family else ("loss",)
    return "min" if name in lower or name.endswith("loss") else "max"


def register_resolvers() -> None:
    """Register the `lmforge.*` resolvers the configs use (idempotent)."""
    resolvers: dict[str, tuple[Callable[..., Any], bool]] = {
        "lmforge.data": (shipped_data, False),
        "lmforge.embedded_model": (embedded_model_path, False),
        "lmforge.split_file": (sibling_split, False),
        # Cached so that every read of hydra.run.dir within one process gives the same answer.
        "lmforge.run_dir": (run_dir, True),
        "lmforge.hydra_subdir": (hydra_subdir, True),
        "lmforge.run_id": (run_id, False),
        "lmforge.sweep_group": (sweep_group, False),
        "lmforge.job_name": (job_name, False),
        "lmforge.family_metric": (family_metric, False),
        "lmforge.metric_mode": (metric_mode, False),
    }
    for name, (function, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)


register_resolvers()
