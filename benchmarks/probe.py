"""When did the first optimizer step finish? The same probe for every contender.

`install(path)` registers two global hooks and changes nothing in the training code it watches:

- a module forward pre-hook (`torch.nn.modules.module.register_module_forward_pre_hook`) that
  notes the first forward call of a module in training mode (evaluation passes before
  training, such as Lightning's sanity check, run in eval mode and do not count) and then
  removes itself: where the set-up ends and the first training batch starts;
- an optimizer-step post hook (`torch.optim.optimizer.register_optimizer_step_post_hook`)
  that counts every `optimizer.step()` of any torch optimizer: one Python call per step.

It writes `{"first_forward": <unix time>, "first_step": ..., "last_step": ..., "steps": n}`
to `path` at the first step and again at exit.

The raw loop and the HF Trainer script call `install` themselves. lmforge is run unchanged
through its console entry point by this file as a script:

    python benchmarks/probe.py PROBE.json -- lmforge-train key=value ...

lmforge imports torch only after Hydra has composed the config (that is part of what its
start-up costs), so the hook is not registered here up front, which would import torch early:
an audit hook watches imports and registers it as soon as `torch.optim.optimizer` is loaded.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path


def install(path: str | Path) -> None:
    """Record the first and last optimizer step of this process into `path` (JSON)."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    record: dict[str, float | int | None] = {
        "first_forward": None,
        "first_step": None,
        "last_step": None,
        "steps": 0,
    }
    target = Path(path)
    forward_hook = None

    def before_forward(module, args) -> None:
        if module.training and record["first_forward"] is None:
            record["first_forward"] = time.time()
            forward_hook.remove()

    def write() -> None:
        target.write_text(json.dumps(record))

    def after_step(optimizer, args, kwargs) -> None:
        now = time.time()
        record["steps"] += 1
        record["last_step"] = now
        if record["first_step"] is None:
            record["first_step"] = now
            write()

    forward_hook = register_module_forward_pre_hook(before_forward)
    register_optimizer_step_post_hook(after_step)
    atexit.register(write)


def _install_when_torch_loads(path: str) -> None:
    done = False

    def on_event(event: str, args: tuple) -> None:
        nonlocal done
        if done or event != "import":
            return
        module = sys.modules.get("torch.optim.optimizer")
        if module is not None and hasattr(module, "register_optimizer_step_post_hook"):
            done = True
            install(path)

    sys.addaudithook(on_event)


def main() -> None:
    """`python probe.py PROBE.json -- <console script> args...`: run it with the probe."""
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: python probe.py PROBE.json -- lmforge-train key=value ...")
    from importlib.metadata import entry_points

    probe_path, script, arguments = sys.argv[1], sys.argv[3], sys.argv[4:]
    (entry,) = entry_points(group="console_scripts", name=script)
    _install_when_torch_loads(probe_path)
    sys.argv = [script, *arguments]
    entry.load()()


if __name__ == "__main__":
    main()
