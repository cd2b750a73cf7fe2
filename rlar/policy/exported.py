"""A shareable policy: a folder with ``model.safetensors`` (the weights) and ``config.json`` (the composed policy
config and the architecture it was built with), loadable as ``policy.checkpoint=FOLDER`` (gpt, llamagen, arpg).
A policy that reads a text encoder trained with its prior (``text_encoder=embedded``) carries that encoder too:
``text_encoder.safetensors``, its definition in ``config.json``'s ``text_encoder``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlar.runtime.atomic_files import atomic_path, atomic_write_text
from rlar.text.encoder import TextEncoder
from rlar.tokenizer.zoo_build import strict_load

WEIGHTS, CONFIG, ENCODER = "model.safetensors", "config.json", "text_encoder.safetensors"
FORMAT = "rlar-policy"
ARCHITECTURE = ("vocab_size", "block_size", "num_classes")  # what the policy was built for (tokenizer, data)


def write_policy_folder(policy: nn.Module, options: dict, out_dir: str | Path, soup: dict | None = None,
                        text_encoder: TextEncoder | None = None) -> Path:
    """Write ``policy``'s weights and config to ``out_dir``, each file whole (a temporary file and a rename), the config
    last: a folder whose writing was stopped has none and is refused, never read half old. ``options``: its resolved
    policy config (``_target_`` and the schema's fields); ``checkpoint`` and ``cache_dir`` are dropped (they name
    this machine's files). ``soup``: how a weight soup was made (its runs and weight), recorded in the config.
    ``text_encoder``: the one the policy reads; written when it was trained with the prior (a frozen public one is
    loaded by its path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)  # written last: a folder whose writing stopped is no export at all
    (out / ENCODER).unlink(missing_ok=True)  # an earlier export's: this policy's is written below, if it has one
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(detached(policy), tmp, metadata={"format": "pt"})
    config = {"format": FORMAT, "class": type(policy).__name__,
              **{k: int(getattr(policy, k)) for k in ARCHITECTURE},
              "policy": {k: v for k, v in options.items() if k not in ("checkpoint", "cache_dir")},
              **({"soup": soup} if soup else {})}
    if text_encoder is not None and text_encoder.trainable:
        with atomic_path(out / ENCODER) as tmp:
            save_file(detached(text_encoder), tmp, metadata={"format": "pt"})
        config["text_encoder"] = text_encoder.spec()
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def detached(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state on the CPU, each tensor its own copy: tied weights share memory, which safetensors
    refuses."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


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
    if config["class"] != type(policy).__name__:
        raise ValueError(f"policy.checkpoint={path} holds a {config['class']} policy, but the configured policy is a "
                         f"{type(policy).__name__}; choose the policy it was exported from (its config.json's "
                         f"policy._target_: {config['policy'].get('_target_')})")
    for key in ARCHITECTURE:
        if config[key] != getattr(policy, key):
            raise ValueError(f"policy.checkpoint={path} was exported with {key}={config[key]}, but the configured "
                             f"policy has {key}={getattr(policy, key)}; its config.json lists the settings it needs")
    return load_file(folder / WEIGHTS)


def run_policy_state(checkpoint: dict) -> dict:
    """The policy weights in a loaded ``policy.checkpoint``: an rlar run record's ``policy``, else the file itself (a
    state dict, or a released layout its loader unwraps). A sharded run's ``last.pt`` holds the loop's state alone
    (the weights are DCP shards): refused, naming the files that hold them."""
    if checkpoint.get("format") == "sharded":
        raise ValueError("policy.checkpoint: this is a sharded run's last.pt, which holds the loop's state alone (its "
                         "weights are DCP shards); give checkpoints/policy.pt (or ema.pt, the moving average) of the "
                         "finished run, or a folder written by rlar-export RUN_DIR OUT_DIR")
    return checkpoint["policy"] if isinstance(checkpoint.get("policy"), dict) else checkpoint


def carries_text_encoder(path: str | Path | None) -> bool:
    """Whether ``path`` is an exported folder that carries its policy's trainable text encoder."""
    return bool(path) and (Path(path).expanduser() / ENCODER).is_file()


def load_carried_text_encoder(path: str | Path, text_encoder: TextEncoder) -> bool:
    """Load into the trainable ``text_encoder`` the encoder that the exported folder ``path`` carries, frozen;
    False when ``path`` carries none (a checkpoint file, or a folder exported without it)."""
    if not carries_text_encoder(path):
        return False
    folder = Path(path).expanduser()
    written = json.loads((folder / CONFIG).read_text()).get("text_encoder")
    if written != text_encoder.spec():
        raise ValueError(f"policy.checkpoint={path} carries a text encoder defined as {written}, but the configured "
                         f"one is {text_encoder.spec()}; set the text_encoder options to those of its config.json")
    strict_load(text_encoder, load_file(folder / ENCODER), f"the text encoder of policy.checkpoint={path}")
    text_encoder.eval().requires_grad_(False)  # frozen in RL
    return True


def folder_or_file(path: str | Path, policy: nn.Module) -> str | Path | dict:
    """A ``policy.checkpoint`` as its loader takes it: the weights of an exported folder, or the file's path."""
    return read_policy_folder(path, policy) if Path(path).expanduser().is_dir() else path
