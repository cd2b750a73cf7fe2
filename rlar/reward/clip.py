"""CLIP reward: how well a sample matches its prompt under a local Hugging Face CLIP model.

``reward = scale * cos(image embedding, prompt embedding)`` (the projected CLIP features; the model's learned
``logit_scale`` is not used; ``scale=100`` gives torchmetrics' CLIPScore units, without its clamp at 0).
An item's prompt is ``meta["prompts"][i]`` when the rollout gives prompts, else ``template.format(name)`` of its
class name ``class_names[meta["labels"][i]]`` (class-conditional models). An item with no prompt (an empty or
None prompt, a label outside the class names such as the null class, or neither prompts nor class names) is
*absent*: NaN in this component, never a made-up score; the weighted mixture then scores it by its other
components (``may_be_absent``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rlar.contracts import Reward
from rlar.reward.quality import as_rgb, to_unit
from rlar.runtime.local_models import local_model_dir

INSTALL = "pip install -e '.[clip]'"


def load_clip(model_path: str):
    """``(CLIPModel in eval mode, frozen, CLIPProcessor)`` from a local directory; never downloads."""
    path = local_model_dir(model_path, "reward.model_path", "CLIP model", "openai/clip-vit-base-patch32")
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ImportError(f"reward=clip needs Hugging Face transformers, the 'clip' extra: {INSTALL}") from err
    model = CLIPModel.from_pretrained(path, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return model.eval().requires_grad_(False), processor


def read_class_names(class_names: list[str] | None, class_names_file: str | None) -> list[str] | None:
    """The class names in class-id order: the list, or the file's non-blank lines (one name per line)."""
    if class_names is not None and class_names_file is not None:
        raise ValueError("set reward.class_names or reward.class_names_file, not both")
    if class_names_file is None:
        return None if class_names is None else [str(name) for name in class_names]
    path = Path(class_names_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reward.class_names_file={class_names_file!r} does not exist; give a text file "
                                "with one class name per line, in class-id order")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def item_prompts(meta: dict | None, n: int, class_names: list[str] | None, template: str) -> list[str | None]:
    """One prompt per item, None where none can be formed (see the module docstring)."""
    meta = meta or {}
    if meta.get("prompts") is not None:
        prompts = list(meta["prompts"])
        if len(prompts) != n:
            raise ValueError(f"meta['prompts'] has {len(prompts)} prompts for {n} images; give one per image")
        return [p if isinstance(p, str) and p.strip() else None for p in prompts]
    if meta.get("labels") is None or not class_names:
        return [None] * n
    labels = torch.as_tensor(meta["labels"]).flatten().tolist()
    if len(labels) != n:
        raise ValueError(f"meta['labels'] has {len(labels)} labels for {n} images; give one per image")
    return [template.format(class_names[y]) if 0 <= y < len(class_names) else None for y in labels]


def clip_pixels(images: torch.Tensor, processor_config: dict) -> torch.Tensor:
    """``[N, 1 or 3, H, W]`` in [-1, 1] -> the model's ``pixel_values`` ``[N, 3, h, w]``, on the images' device.

    The CLIP image processor's steps on tensors, without a PIL round trip: grayscale repeated to RGB, bicubic
    resize (shortest edge, or height x width), center crop, mean/std normalisation.
    """
    x = as_rgb(to_unit(images))  # [N, 3, H, W] in [0, 1]
    size = processor_config.get("size") or {}
    if processor_config.get("do_resize", True) and size:
        edge = size.get("shortest_edge")
        x = TF.resize(x, edge if edge else [size["height"], size["width"]],
                      interpolation=InterpolationMode.BICUBIC, antialias=True)
    crop = processor_config.get("crop_size") or {}
    if processor_config.get("do_center_crop", False) and crop:
        x = TF.center_crop(x, [crop["height"], crop["width"]])
    x = x.clamp(0, 1)
    if processor_config.get("do_normalize", True):
        mean = x.new_tensor(processor_config["image_mean"]).view(1, 3, 1, 1)
        std = x.new_tensor(processor_config["image_std"]).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def projected(features) -> torch.Tensor:
    """The projected embedding ``[M, D]``: transformers 4 returns it, 5 returns an output holding it."""
    return features if torch.is_tensor(features) else features.pooler_output


class CLIPReward(Reward):
    """``reward(images, targets, meta) -> (scale * cos [N], {"clip": [N]})``; ``targets`` are ignored."""

    may_be_absent = True  # NaN marks an item without a prompt (WeightedReward leaves it out of that item's total)

    def __init__(self, model_path: str, class_names: list[str] | None = None, class_names_file: str | None = None,
                 template: str = "a photo of a {}", scale: float = 1.0, batch_size: int = 64):
        if template.format("x") == template:
            raise ValueError(f"reward.template={template!r} needs a '{{}}' where the class name goes")
        if batch_size < 1:
            raise ValueError(f"reward.batch_size must be >= 1, got {batch_size}")
        self.class_names = read_class_names(class_names, class_names_file)
        self.template = template
        self.scale = scale
        self.batch_size = batch_size
        self.model, self.processor = load_clip(model_path)
        self.image_config = self.processor.image_processor.to_dict()
        self.max_length = self.model.config.text_config.max_position_embeddings

    def text_embeddings(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Unit-norm prompt embeddings ``[P, D]``."""
        tokens = self.processor.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                                          return_tensors="pt").to(device)
        return torch.nn.functional.normalize(projected(self.model.get_text_features(**tokens)).float(), dim=-1)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[M, D]``, computed ``batch_size`` images at a time."""
        chunks = [projected(self.model.get_image_features(pixel_values=clip_pixels(x, self.image_config)))
                  for x in images.split(self.batch_size)]
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        n = images.shape[0]
        prompts = item_prompts(meta, n, self.class_names, self.template)
        reward = torch.full((n,), float("nan"), device=images.device)  # [N], NaN = absent
        present = [i for i, p in enumerate(prompts) if p is not None]
        if not present:
            warnings.warn("reward clip: no item has a prompt, so the CLIP component is absent (NaN) for the whole "
                          "batch; pass meta['prompts'] from the rollout, or set reward.class_names (or "
                          "reward.class_names_file) for class-conditional models", stacklevel=2)
            return reward, {"clip": reward}
        self.model.to(images.device)
        unique = {p: k for k, p in enumerate(dict.fromkeys(prompts[i] for i in present))}  # prompt -> row
        text = self.text_embeddings(list(unique), images.device)  # [P, D]
        which = torch.tensor([unique[prompts[i]] for i in present], device=images.device)  # [M]
        index = torch.tensor(present, device=images.device)  # [M]
        image = self.image_embeddings(images[index].float())  # [M, D]
        reward[index] = self.scale * (image * text[which]).sum(-1)
        return reward, {"clip": reward}
