"""Pretrained models read from a local folder: rlar never downloads weights at run time."""

from __future__ import annotations

from pathlib import Path


def local_model_dir(model_path: str, option: str, what: str, repo: str) -> Path:
    """``model_path`` as a folder holding a Hugging Face model's ``config.json``; otherwise a FileNotFoundError that
    names ``option`` and shows how to fetch ``repo`` there first."""
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{option}={model_path!r}: no {what} there (expected config.json, the weights and the tokenizer or "
            "processor files); it is never downloaded at run time. Get one first, e.g. "
            f"`huggingface-cli download {repo} --local-dir {path}`, and pass that directory")
    return path
