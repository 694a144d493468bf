"""The reproducibility record of a run: what it takes to run it again and get the same result.

`reproducibility.json` in the run directory holds the command line and overrides, the seed,
the versions of the packages that shape the numbers, the git commit of the code, a fingerprint
of every data file read, and the machine. A resumed run keeps that first record and writes its
own beside it (`reproducibility.resume-1.json`, ...): the machine or the packages may differ.
The resolved config is in config.yaml next to it, and `requirements.txt` (a resumed run:
`requirements.resume-<n>.txt`) pins every installed distribution, so
`pip install -c requirements.txt -e .` at the recorded commit reinstalls the run's exact versions.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from lmforge.data.sources import file_fingerprint
from lmforge.data.splits import SPLITS
from lmforge.runtime.packages import installed_versions
from lmforge.runtime.rundir import write_json

log = logging.getLogger(__name__)

RECORD_FILE = "reproducibility.json"
REQUIREMENTS_FILE = "requirements.txt"
# Installers that pip itself leaves out of a freeze: pinning them changes nothing a run computes.
INSTALLERS = {"pip", "setuptools", "wheel", "distribute"}
# The distributions whose versions change what a run computes (or whether it runs at all).
PACKAGES = (
    "lmforge",
    "torch",
    "transformers",
    "lightning",
    "torchmetrics",
    "datasets",
    "tokenizers",
    "peft",
    "numpy",
    "hydra-core",
    "omegaconf",
    "scikit-learn",
)
GIT_TIMEOUT_SECONDS = 5


def record_reproducibility(
    run_dir: Path, cfg: DictConfig, data_fingerprints: dict[str, str] | None = None
) -> Path:
    """Write this run's record (a resumed run adds a numbered one); return its path.

    Args:
        run_dir: the run directory.
        cfg: the run's config (the seed and data sources are read from it).
        data_fingerprints: split -> fingerprint as the datamodule computed them (SHA-256 of a
            file's bytes, or a hub data set's fingerprint); files missing from it are hashed here.
    """
    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **_invocation(),
        "seed": cfg.get("seed"),
        "deterministic": OmegaConf.select(cfg, "trainer.deterministic", default=None),
        "data": _data_record(cfg, data_fingerprints or {}),
        "versions": package_versions(),
        "git": git_state(),
        "platform": platform_record(),
    }
    resume = _resume_number(run_dir)
    suffix = f".resume-{resume}" if resume else ""
    requirements = run_dir / f"{Path(REQUIREMENTS_FILE).stem}{suffix}.txt"
    requirements.write_text(requirements_text(), encoding="utf-8")
    record["requirements"] = requirements.name
    return write_json(run_dir, f"{Path(RECORD_FILE).stem}{suffix}.json", record)


def _resume_number(run_dir: Path) -> int:
    """0 for the first record of a run directory, n for its n-th resumption."""
    if not (run_dir / RECORD_FILE).exists():
        return 0
    n = 1
    while (run_dir / f"reproducibility.resume-{n}.json").exists():
        n += 1
    return n


def requirements_text() -> str:
    """Every installed distribution as `name==version`, sorted, in pip's requirements format.

    lmforge itself is left out: its code is the commit in the record (an editable checkout has
    no version that pins it)."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in INSTALLERS or name.lower() == "lmforge":
            continue
        pins[name] = dist.version
    header = (
        "# The packages installed when this run started. Reinstall them, with the code at the\n"
        "# commit in the run's reproducibility record:  pip install -c <this file> -e <checkout>\n"
    )
    return header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins, key=str.lower))


def _invocation() -> dict[str, Any]:
    """How the run was started: the command line and Hydra overrides when Hydra started it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        # train(cfg) called from Python: sys.argv belongs to the calling program.
        return {"command": None, "overrides": None, "started_by": "lmforge.train.train(cfg)"}
    # Typed as the HydraConf dataclass; at run time it is the DictConfig Hydra built from it.
    hydra = cast(DictConfig, HydraConfig.get())
    return {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "overrides": list(hydra.overrides.task),
        "started_by": f"hydra ({hydra.mode.name.lower()})",
        "working_directory": hydra.runtime.cwd,
    }


def _data_record(cfg: DictConfig, fingerprints: dict[str, str]) -> dict[str, Any]:
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return {}
    name = data.get("dataset_name")
    if name:
        return {
            "dataset_name": name,
            "dataset_config": data.get("dataset_config"),
            "fingerprints": dict(fingerprints),
        }
    files: dict[str, Any] = {}
    for split in SPLITS:
        path = data.get(f"{split}_file")
        if not path:
            continue
        file = Path(str(path)).expanduser()
        digest = fingerprints.get(split) or (file_fingerprint(file) if file.is_file() else None)
        files[split] = {
            "path": str(file.resolve()),
            "sha256": digest,
            "bytes": file.stat().st_size if file.is_file() else None,
        }
    return {"files": files}


def package_versions() -> dict[str, str | None]:
    """Python and the installed versions of `PACKAGES` (None when one is not installed)."""
    return {"python": platform.python_version(), **installed_versions(list(PACKAGES))}


def git_state() -> dict[str, Any] | None:
    """The commit of the code that ran: the checkout lmforge is installed from, or else the
    working directory's; None outside git (or without git)."""
    package_dir = Path(__file__).resolve().parent
    for where in (package_dir, Path.cwd()):
        root = _git(where, "rev-parse", "--show-toplevel")
        if root is None:
            continue
        commit = _git(where, "rev-parse", "HEAD")
        status = _git(where, "status", "--porcelain", "--untracked-files=no")
        return {
            "repository": root,
            "commit": commit,
            # Uncommitted changes to tracked files: the commit alone does not give this code.
            "dirty": bool(status) if status is not None else None,
            "of": "lmforge" if where == package_dir else "working directory",
        }
    return None


def _git(where: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung: the record says so by leaving the field empty
    return result.stdout.strip() if result.returncode == 0 else None


def platform_record() -> dict[str, Any]:
    """The machine: OS, CPU, thread counts and accelerators as torch sees them."""
    record: dict[str, Any] = {
        "system": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # already imported by a training run; never imported here
    if torch is not None:
        cuda = torch.cuda.is_available()
        record.update(
            {
                "torch_threads": torch.get_num_threads(),
                "cuda_version": torch.version.cuda,
                "cuda_devices": [
                    torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
                ]
                if cuda
                else [],
                "cudnn_version": torch.backends.cudnn.version() if cuda else None,
                "mps": bool(getattr(torch.backends, "mps", None))
                and torch.backends.mps.is_available(),
            }
        )
    return record


def _cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's answer elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None
