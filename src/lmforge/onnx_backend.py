"""ONNX Runtime behind lmforge's own calls: an exported `model.onnx` (fp32 or int8) run where a
PyTorch model would be, by `lmforge-predict`, `lmforge-serve` and the export's metric check.

`OnnxModel` answers `model(**inputs)` as a Hugging Face model does (outputs by name, as torch
tensors), so the families' predictors and test steps run it unchanged; `quantize_int8` writes
the dynamically quantized graph (onnxruntime's quantizer: int8 weights, activations quantized
per batch as it runs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils.generic import ModelOutput

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

# Keyword arguments of a Hugging Face forward pass that are targets, not inputs: given, the
# call also returns the loss.
TARGETS = ("labels", "start_positions", "end_positions")
# The quantized graph's file beside model.onnx.
QUANTIZED_FILE = "model_int8.onnx"


def session_threads(threads: int | None = None) -> int:
    """Intra-op threads of a session: `threads`, else the cores this process may use (ONNX
    Runtime's own default counts every core of the machine, cgroup limits aside)."""
    from lmforge.data.datamodule import available_cores

    return int(threads) if threads else available_cores()


def inference_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on `path`, with every graph optimization."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = session_threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise LmforgeError(
            f"{path}: ONNX Runtime cannot load this graph ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}); "
            "export it again with lmforge-export format=onnx."
        ) from err


class OnnxModel(nn.Module):
    """An ONNX graph as the model of a predictor or a task module (CPU only, no weights in
    PyTorch).

    Args:
        path: the .onnx file.
        config: the Hugging Face config saved beside it (labels, positions, ...).
        output_names: the graph's outputs, in order (`lmforge.json`'s `outputs`).
        loss_function: the PyTorch model's own loss (`PreTrainedModel.loss_function`), so a
            call that passes targets (`labels`, `start_positions`, ...) gets `loss` as the
            PyTorch model gives it; None: no loss.
        threads: intra-op threads (default: the cores this process may use).
    """

    def __init__(
        self,
        path: Path,
        config: Any,
        output_names: list[str] | tuple[str, ...],
        loss_function: Any = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.config = config
        self.output_names = list(output_names)
        self.loss_function = loss_function
        self.session = inference_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        # Predictors place their inputs on the model's device: this one's is the CPU.
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxModel:
        # `.to(device)`: ONNX Runtime's CPU session stays where it is; only the CPU is accepted.
        probe = fn(torch.zeros(0))
        if probe.device.type != "cpu":
            raise LmforgeError(
                f"{self.path}: an ONNX model runs on the CPU through ONNX Runtime here; use "
                "device=cpu, or predict from the checkpoint or a format=hf export for a GPU."
            )
        return self

    def forward(self, **inputs: Any) -> ModelOutput:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise LmforgeError(
                f"{self.path}: the graph needs the inputs {', '.join(missing)}, which were not "
                "given."
            )
        feeds = {name: inputs[name].detach().cpu().long().numpy() for name in self.input_names}
        results = self.session.run(self.output_names, feeds)
        outputs = {
            name: torch.from_numpy(value)
            for name, value in zip(self.output_names, results, strict=True)
        }
        targets = {k: inputs[k] for k in TARGETS if isinstance(inputs.get(k), torch.Tensor)}
        if targets and self.loss_function is not None:
            # The Hugging Face loss functions share one calling convention by keyword.
            outputs["loss"] = self.loss_function(
                **outputs,
                **targets,
                pooled_logits=outputs.get("logits"),
                vocab_size=getattr(self.config, "vocab_size", None),
                config=self.config,
            )
        return ModelOutput(**outputs)


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of an fp32 graph (onnxruntime.quantization): the weights of
    MatMul/Gemm (and the like) stored as int8, activations quantized per batch as it runs.
    The graph is first put through onnxruntime's pre-processing (shape inference and graph
    optimization), as its documentation recommends, where that succeeds."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as err:  # pre-processing is an optimization, not a requirement
            log.info("Quantization pre-processing skipped (%s): quantizing the graph as is", err)
            prepared = source
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    return target
