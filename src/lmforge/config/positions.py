"""How many tokens a model can take: its position embeddings, computed in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Architectures whose learned positions start after the padding index, so max_position_embeddings
# counts pad_token_id + 1 slots that no token can use (RoBERTa: 514 -> 512 tokens).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod"}


def usable_positions(fields: Mapping[str, Any]) -> int | None:
    """The longest input a model with these config fields (config.json as a dict) takes; None
    for relative or rotary positions, which have no fixed limit."""
    limit = fields.get("max_position_embeddings") or fields.get("n_positions")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return None
    if fields.get("model_type") in OFFSET_POSITIONS:
        limit -= int(fields.get("pad_token_id") or 0) + 1
    return limit
