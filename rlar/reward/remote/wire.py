"""The wire format: a request is one safetensors buffer, a response is JSON.

Request body (``Content-Type: application/octet-stream``), a safetensors buffer holding
  ``images``       float16/bfloat16/float32/float64 ``[N, C, H, W]``
  ``targets``      optional, the same shape as ``images`` (any of those float dtypes)
  ``meta/<key>``   optional tensors of the reward's ``meta`` dict (e.g. ``meta/labels`` ``[N]``)
and, in the safetensors header's ``__metadata__``, ``"meta"``: a JSON object with the rest of ``meta``.
Response: ``{"scores": [N floats], "components": {name: [N floats]}}``; a non-finite value is ``null``.
"""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load, save

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
META_PREFIX = "meta/"


class WireError(ValueError):
    """A request the server refuses: ``status`` is the HTTP code, the message its reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def encode_request(images: torch.Tensor, targets: torch.Tensor | None, meta: dict | None) -> bytes:
    """``images``/``targets`` ``[N, C, H, W]`` and ``meta`` (tensors, or JSON values) -> a safetensors buffer."""
    tensors = {"images": images}
    if targets is not None:
        tensors["targets"] = targets
    rest = {}
    for key, value in (meta or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[META_PREFIX + key] = value
        else:
            rest[key] = value
    return save(own_memory(tensors), metadata={"meta": json.dumps(rest)})


def own_memory(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage (safetensors refuses tensors that share one)."""
    out, storages = {}, set()
    for name, x in tensors.items():
        x = x.detach().cpu().contiguous()
        storage = x.untyped_storage().data_ptr()
        out[name] = x.clone() if storage in storages else x
        storages.add(storage)
    return out


def header_metadata(body: bytes) -> dict:
    """The ``__metadata__`` of a safetensors buffer that already loaded (8-byte length, then a JSON header)."""
    size = int.from_bytes(body[:8], "little")
    return json.loads(body[8:8 + size]).get("__metadata__") or {}


def decode_request(body: bytes, max_batch: int) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The inverse of ``encode_request``, validated: raises ``WireError`` (400/422) with the reason."""
    try:
        tensors = load(body)
        meta = json.loads(header_metadata(body).get("meta", "{}"))
    except Exception as e:  # any parse failure is the client's: report it
        raise WireError(400, f"body is not a safetensors buffer with a JSON 'meta' field: {e}") from None
    if not isinstance(meta, dict):
        raise WireError(422, f"'meta' must be a JSON object, got {type(meta).__name__}")
    unknown = sorted(k for k in tensors if k not in ("images", "targets") and not k.startswith(META_PREFIX))
    if unknown:
        raise WireError(422, f"unexpected tensors {unknown}; expected images, targets, meta/<key>")
    images, targets = tensors.get("images"), tensors.get("targets")
    if images is None:
        raise WireError(422, "missing tensor 'images' [N, C, H, W]")
    for name, x in (("images", images), ("targets", targets)):
        if x is not None and x.dtype not in FLOAT_DTYPES:
            raise WireError(422, f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise WireError(422, f"images must be [N, C, H, W] with N >= 1, got shape {list(images.shape)}")
    if targets is not None and targets.shape != images.shape:
        raise WireError(422, f"targets shape {list(targets.shape)} != images shape {list(images.shape)}")
    if images.shape[0] > max_batch:
        raise WireError(422, f"batch of {images.shape[0]} images is over this server's limit of {max_batch} "
                             "(--max-batch): send smaller chunks")
    meta.update({k[len(META_PREFIX):]: v for k, v in tensors.items() if k.startswith(META_PREFIX)})
    return images, targets, meta


def to_json_floats(x: torch.Tensor) -> list[float | None]:
    """``[N]`` -> floats, a non-finite value as ``None`` (JSON null)."""
    return [v if math.isfinite(v) else None for v in x.detach().float().cpu().tolist()]


def encode_scores(scores: torch.Tensor, components: dict[str, torch.Tensor]) -> dict:
    """A reward's ``(scores [N], {name: [N]})`` -> the response JSON."""
    return {"scores": to_json_floats(scores), "components": {k: to_json_floats(v) for k, v in components.items()}}


def from_json_floats(values, n: int, what: str) -> torch.Tensor:
    """A JSON list of ``n`` numbers or nulls -> float32 ``[n]`` (null -> NaN); ``ValueError`` naming what came instead
    if it is not one (the kind of a bad item, not its value: the warning is logged once per distinct reason)."""
    if not isinstance(values, list) or len(values) != n:
        got = f"a list of {len(values)}" if isinstance(values, list) else type(values).__name__
        raise ValueError(f"response {what} must be a list of {n} numbers, got {got}")
    bad = next((v for v in values if v is not None and not is_number(v)), None)
    if bad is not None:
        raise ValueError(f"response {what} must hold numbers or nulls, got a {type(bad).__name__} among them")
    try:
        return torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
    except OverflowError:
        raise ValueError(f"response {what} holds an integer too large for a float") from None


def is_number(value) -> bool:
    """Whether a JSON value is a number (``true``/``false`` are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def decode_scores(payload, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The response JSON -> ``(scores [n], {name: [n]})``; ``ValueError`` on a malformed response."""
    if not isinstance(payload, dict) or not isinstance(payload.get("components", {}), dict):
        raise ValueError("response must be a JSON object {'scores': [...], 'components': {...}}")
    components = {k: from_json_floats(v, n, f"component {k!r}") for k, v in payload.get("components", {}).items()}
    return from_json_floats(payload.get("scores"), n, "scores"), components
