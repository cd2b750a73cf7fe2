"""IBQ, the TokLIP / SEED-Voken tokenizer (``ibqgan.py`` IBQ with ``IndexPropagationQuantize``).

The taming VQGAN layout (same key names and blocks); codes are the argmax of the dot-product logits
``z . e`` (no distance, no normalization). With ``use_ema`` the file also holds LitEma's buffers
``model_ema.decay`` (float32), ``model_ema.num_updates`` (int32) and ``model_ema.<parameter name without dots>``;
they load strictly and, by default, stay unused: the modules keep the raw weights, as TokLIP encodes with.
:meth:`IBQ.use_ema_weights` copies the EMA weights into the modules (``tokenizer.weights=ema``).
"""

from __future__ import annotations

import torch
from torch import nn

from rlar.tokenizer.taming_blocks import by_row_chunks
from rlar.tokenizer.taming_vqgan import TamingVQGAN


class EmaShadow(nn.Module):
    """LitEma's state (buffers only): one shadow copy per parameter of ``model``, named without dots."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(-1, dtype=torch.int32))
        for name, p in model.named_parameters():
            self.register_buffer(name.replace(".", ""), p.detach().clone())


class IBQ(TamingVQGAN):
    """IBQ generator with the FrozenTokenizer interface; arguments are IBQ's ``init_args``.

    ``lossconfig`` (training loss), ``l2_normalize`` (it only reaches the quantizer IBQ replaces) and ``stage``
    are accepted for compatibility and have no effect. ``image_size`` sets the grid (default
    ``ddconfig["resolution"]``; TokLIP-XL encodes 512 px images into 32x32 codes).
    """

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, lossconfig: dict | None = None,
                 l2_normalize: bool = False, use_ema: bool = False, stage: str | None = None,
                 image_size: int | tuple[int, int] | None = None):
        super().__init__(ddconfig, n_embed, embed_dim, image_size)
        if use_ema:
            self.model_ema = EmaShadow(self)

    def use_ema_weights(self) -> None:
        """Replace every parameter by its EMA copy ``model_ema.<name without dots>`` (LitEma's ``copy_to``)."""
        if not hasattr(self, "model_ema"):
            raise ValueError("this IBQ holds no EMA weights (built with use_ema=False)")
        shadows = dict(self.model_ema.named_buffers())
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(shadows[name.replace(".", "")])

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, D, h, w]`` -> codes ``[B, h*w]``: argmax over codes of ``z . e``."""
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, D]
        e = self.quantize.embedding.weight.float()
        return by_row_chunks(flat, len(e), lambda rows: (rows @ e.T).argmax(1)).view(z.shape[0], -1)


def ibq_state(checkpoint: dict) -> dict:
    """The model's state dict in an IBQ file: ``checkpoint["state_dict"]``."""
    if "state_dict" not in checkpoint:
        raise KeyError(f"an IBQ checkpoint keeps its weights under 'state_dict'; this file has {sorted(checkpoint)}")
    return checkpoint["state_dict"]
