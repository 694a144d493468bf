"""Known library breaks: refused up front with both versions named, and only in their range."""

from __future__ import annotations

import pytest

from lmforge.config import compatibility
from lmforge.config.compatibility import strategy_problem
from lmforge.config.validation import check_config
from lmforge.errors import LmforgeError

BROKEN = {"transformers": "5.24.0", "peft": "0.21.2"}


@pytest.mark.parametrize(
    ("transformers", "peft", "refused"),
    [
        ("5.24.0", "0.21.2", True),
        ("5.30.1", "0.20.0", True),
        ("5.24.0.dev0", "0.21.2", True),  # a pre-release of 5.24 already has the new name
        ("5.23.0", "0.21.2", False),
        ("5.24.0", "0.22.0", False),
        ("5.24.0", None, False),  # peft not installed: nothing to say here
    ],
)
def test_prefix_tuning_is_refused_only_for_the_breaking_pair(transformers, peft, refused):
    versions = {"transformers": transformers, "peft": peft}
    problem = strategy_problem("prefix_tuning", versions)
    assert (problem is not None) == refused
    if refused:
        assert f"transformers {transformers} with peft {peft}" in problem
        assert "pip install 'transformers<5.24'" in problem
        assert "\n" not in problem


def test_other_methods_are_not_affected_by_the_prefix_tuning_break():
    for method in ("full", "freeze", "lora", "dora", "ia3", "prompt_tuning"):
        assert strategy_problem(method, BROKEN) is None


def test_the_config_check_refuses_a_known_break_before_any_model_is_built(make_cfg, monkeypatch):
    monkeypatch.setattr(compatibility, "installed_versions", lambda names: dict(BROKEN))
    with pytest.raises(LmforgeError, match=r"finetune=prefix_tuning does not work with the instal"):
        check_config(make_cfg("finetune=prefix_tuning"))
    check_config(make_cfg("finetune=prompt_tuning"))  # the other prompt method goes ahead
    monkeypatch.setattr(
        compatibility, "installed_versions", lambda names: {**BROKEN, "transformers": "5.23.0"}
    )
    check_config(make_cfg("finetune=prefix_tuning"))
