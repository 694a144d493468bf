"""Entity-level scores computed by seqeval: what torchmetrics does not provide for NER.

A torchmetrics `Metric`, so its state is reduced across processes under DDP.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError


class EntityScores(Metric):
    """Entity-level precision, recall and F1 (micro, and F1 per type) computed by seqeval.

    `strict=False` is seqeval's default, conlleval-compatible mode (an I- tag after O starts an
    entity); `strict=True` checks entities against `scheme` (IOB2 or IOBES) exactly.
    Positions labelled -100 (special tokens, later subwords) are left out.
    """

    full_state_update = False
    # The states `add_state` registers (declared for the type checker; no value is set here).
    preds: list[torch.Tensor]
    target: list[torch.Tensor]
    lengths: list[torch.Tensor]

    def __init__(self, label_names: list[str], strict: bool = False, scheme: str = "IOB2"):
        super().__init__()
        self.label_names = list(label_names)
        self.strict = strict
        self.scheme = scheme
        if strict and scheme not in ("IOB2", "IOBES"):
            raise LmforgeError(
                f"Strict entity matching needs tag scheme IOB2 or IOBES, got {scheme!r}."
            )
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """predictions, labels: (batch, seq) tag ids; -100 in labels marks ignored positions."""
        keep = labels != IGNORE_INDEX
        self.preds.append(predictions[keep])
        self.target.append(labels[keep])
        self.lengths.append(keep.sum(dim=1))

    def compute(self) -> dict[str, torch.Tensor]:
        from seqeval import scheme as schemes
        from seqeval.metrics import classification_report

        preds, target = dim_zero_cat(self.preds).tolist(), dim_zero_cat(self.target).tolist()
        lengths = dim_zero_cat(self.lengths).tolist()
        y_pred, y_true, start = [], [], 0
        for n in lengths:
            y_pred.append([self.label_names[i] for i in preds[start : start + n]])
            y_true.append([self.label_names[i] for i in target[start : start + n]])
            start += n
        options = {"mode": "strict", "scheme": getattr(schemes, self.scheme)} if self.strict else {}
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **options)
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        values = {
            "precision": micro["precision"],
            "recall": micro["recall"],
            "f1": micro["f1-score"],
        }
        types = sorted({n[2:] for n in self.label_names if n != "O"})
        for name in types:
            values[f"f1_{name}"] = report.get(name, {}).get("f1-score", 0.0)
        return {k: torch.tensor(float(v)) for k, v in values.items()}
