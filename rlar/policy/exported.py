"""A shareable policy: a folder with ``model.safetensors`` (the weights) and ``config.json`` (the composed policy
config and the architecture it was built with), loadable as ``policy.checkpoint=FOLDER`` (gpt, llamagen, arpg)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "rlar-policy"
ARCHITECTURE = ("vocab_size", "block_size", "num_classes")  # what the policy was built for (tokenizer, data)


def write_policy_folder(policy: nn.Module, options: dict, out_dir: str | Path, soup: dict | None = None) -> Path:
    """Write ``policy``'s weights and config to ``out_dir``. ``options``: its resolved policy config (``_target_``
    and the schema's fields); ``checkpoint`` and ``cache_dir`` are dropped (they name this machine's files).
    ``soup``: how a weight soup was made (its runs and weight), recorded in the config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # tied weights share memory, which safetensors refuses: each tensor is written on its own
    state = {k: v.detach().cpu().clone().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, out / WEIGHTS, metadata={"format": "pt"})
    config = {"format": FORMAT, "class": type(policy).__name__,
              **{k: int(getattr(policy, k)) for k in ARCHITECTURE},
              "policy": {k: v for k, v in options.items() if k not in ("checkpoint", "cache_dir")},
              **({"soup": soup} if soup else {})}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_policy_folder(path: str | Path, policy: nn.Module) -> dict:
    """The weights of the exported policy in folder ``path``, after checking that its architecture is
    ``policy``'s (the strict load then checks every key and shape)."""
    folder = Path(path).expanduser()
    missing = [name for name in (WEIGHTS, CONFIG) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"policy.checkpoint={path} is a folder without {' and '.join(missing)}; an exported "
                                f"policy (rlar-export RUN_DIR OUT_DIR) holds {WEIGHTS} and {CONFIG}")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG} is not an rlar policy config (format {config.get('format')!r})")
    for key in ARCHITECTURE:
        if config[key] != getattr(policy, key):
            raise ValueError(f"policy.checkpoint={path} was exported with {key}={config[key]}, but the configured "
                             f"policy has {key}={getattr(policy, key)}; its config.json lists the settings it needs")
    return load_file(folder / WEIGHTS)


def folder_or_file(path: str | Path, policy: nn.Module) -> str | Path | dict:
    """A ``policy.checkpoint`` as its loader takes it: the weights of an exported folder, or the file's path."""
    return read_policy_folder(path, policy) if Path(path).expanduser().is_dir() else path
