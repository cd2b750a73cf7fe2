"""A Hugging Face dataset written by ``save_to_disk``: a DatasetDict with a ``train`` split (or a single Dataset)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_from_disk

from rlar.data.decode import PREPROCESSING
from rlar.data.stored import Split, StoredImageData, subset_rows

IMAGE_COLUMNS = ("image", "image_path", "file", "filepath")  # tried in this order
LABEL_COLUMNS = ("label", "labels")
EVAL_SPLITS = ("validation", "test")  # eval_split=null takes the first present, else holds out part of train
HOLDOUT = "holdout"


def resolve(path: str, base: Path) -> Path:
    """A path from a column: absolute as is; a relative one under the dataset directory ``base``, or under the
    current directory when only there it exists."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return p.absolute() if not (base / p).exists() and p.exists() else base / p


class ImageColumn:
    """Item ``i`` of a split's image column -> ``(bytes or path for PIL, name)``; picklable for DataLoader workers.
    ``rows [n]``: the split's row number of each item (named in messages)."""

    def __init__(self, dataset: Dataset, column: str, base: Path, where: str, rows: torch.Tensor):
        feature = dataset.features[column]
        if isinstance(feature, Image):
            dataset = dataset.cast_column(column, Image(decode=False))  # {"bytes", "path"}: rlar decodes itself
        elif not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(f"column '{column}' of {where} holds {feature}; rlar reads an Image column or a column "
                             "of file paths (strings)")
        self.dataset, self.column, self.base, self.where = dataset.select_columns([column]), column, base, where
        self.rows = rows.numpy()  # one int64 buffer, not a Python int per row for every worker to copy

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        value = self.dataset[i][self.column]
        name = f"{self.where} row {int(self.rows[i])}"
        if isinstance(value, dict):  # an Image feature's cell
            if value.get("bytes"):
                return io.BytesIO(value["bytes"]), f"{name} ({value['path']})" if value.get("path") else name
            value = value.get("path")
        if value is None:
            return None, name
        path = resolve(value, self.base)
        return path, str(path)


class CaptionColumn:
    """Item ``i`` of a split's text column -> its caption (a missing cell: the empty caption), read on access from
    the dataset's memory-mapped table."""

    def __init__(self, dataset: Dataset, column: str, where: str):
        feature = dataset.features[column]
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(f"caption column '{column}' of {where} holds {feature}; captions must be a column of "
                             "strings (data.caption_column)")
        self.dataset, self.column = dataset.select_columns([column]), column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> str:
        return self.dataset[int(i)][self.column] or ""


def saved_fingerprint(directory: Path) -> str:
    """The fingerprint ``datasets`` wrote for the split saved in ``directory`` (``_fingerprint`` of its
    ``state.json``, written by ``save_to_disk``): a hash of the split's content, or of the operations that made it,
    so the split saved again with other content gets another one, and the same split at another path keeps it."""
    return json.loads((directory / "state.json").read_text(encoding="utf-8"))["_fingerprint"]


def pick_column(dataset: Dataset, wanted: str | None, candidates: tuple[str, ...], key: str, where: str) -> str:
    """``wanted`` if given, else the first of ``candidates`` that ``dataset`` has; a clear error otherwise."""
    names = [wanted] if wanted else list(candidates)
    for name in names:
        if name in dataset.column_names:
            return name
    raise ValueError(f"{where} has no column {' / '.join(names)}; its columns are {dataset.column_names}: "
                     f"set data.{key}=<one of them> (or rename the column)")


class HFDiskData(StoredImageData):
    """Images and labels of a dataset saved with ``datasets``' ``save_to_disk``, center-cropped to ``image_size``.

    Image column: ``image`` (an Image feature, or file paths), else ``image_path`` / ``file`` / ``filepath``;
    label column: ``label``, else ``labels``. Evaluation uses ``eval_split``; null: ``validation`` or ``test``
    when present, else a held-out ``eval_fraction`` of train (``holdout`` forces that). Images are decoded on access
    (see :class:`StoredImageData`). ``caption_column``: a text column of captions (null: none), read on access.
    """

    def __init__(self, path: str, image_size: int = 256, channels: int = 3, split: str = "train",
                 eval_split: str | None = None, eval_fraction: float = 0.1, split_seed: int = 0,
                 max_images: int | None = None, num_workers: int = 0, image_column: str | None = None,
                 label_column: str | None = None, num_classes: int | None = None, caption_column: str | None = None):
        super().__init__(image_size, channels, num_workers)
        self.path = Path(path).expanduser().absolute()
        self.split, self.eval_fraction, self.split_seed, self.max_images = split, eval_fraction, split_seed, max_images
        self.image_column, self.label_column, self.caption_column = image_column, label_column, caption_column
        splits = self._open()
        if split not in splits:
            raise ValueError(f"data.path='{self.path}' has splits {sorted(splits)} but no '{split}'; set "
                             f"data.split=<one of them>")
        self.eval_split = self._eval_split(eval_split, splits)
        single = (self.path / "state.json").is_file()  # a Dataset (opened as the split 'train'), not a DatasetDict
        self.saved_fingerprints = {name: saved_fingerprint(self.path if single else self.path / name)
                                   for name in (split, self.eval_split) if name in splits}
        train, class_label_count = self._read(splits[split], split)
        held_out = None if self.eval_split == HOLDOUT else self._read(splits[self.eval_split], self.eval_split)[0]
        self.store(train, held_out, eval_fraction, split_seed,
                   class_label_count if num_classes is None else num_classes, f"data.path='{self.path}'")

    def _open(self) -> dict[str, Dataset]:
        if not self.path.exists():
            raise FileNotFoundError(f"data.path='{self.path}' does not exist; give the directory written by "
                                    "datasets' save_to_disk (a DatasetDict with a 'train' split, or a Dataset)")
        try:
            loaded = load_from_disk(str(self.path))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data.path='{self.path}' is not a dataset written by save_to_disk ({e}); for a "
                                    "folder of class sub-folders of images use data=image_folder") from e
        return dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}

    def _eval_split(self, eval_split: str | None, splits: dict) -> str:
        if eval_split is None:
            return next((s for s in EVAL_SPLITS if s in splits and s != self.split), HOLDOUT)
        if eval_split == self.split:
            raise ValueError(f"data.eval_split='{eval_split}' is the train split (data.split): every held-out item "
                             f"would be one the policy trains on; name another split, '{HOLDOUT}' (hold out "
                             "data.eval_fraction of train) or null")
        if eval_split != HOLDOUT and eval_split not in splits:
            raise ValueError(f"data.eval_split='{eval_split}' is not a split of data.path='{self.path}' (splits: "
                             f"{sorted(splits)}); name one of them, '{HOLDOUT}' (hold out data.eval_fraction of "
                             "train) or null (validation/test when present, else holdout)")
        return eval_split

    def _read(self, dataset: Dataset, split: str) -> tuple[Split, int | None]:
        """Index the (possibly ``max_images``-subsampled) split: ``((its image column, labels [N], its caption
        column or None), K)``, K the class count of a ClassLabel column (it fixes the class set, e.g. ImageNet's
        1,000 in a subset), else None. Nothing is decoded here."""
        where = f"split '{split}' of data.path='{self.path}'"
        image_col = pick_column(dataset, self.image_column, IMAGE_COLUMNS, "image_column", where)
        label_col = pick_column(dataset, self.label_column, LABEL_COLUMNS, "label_column", where)
        feature = dataset.features[label_col]
        if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and "int" in feature.dtype)):
            raise ValueError(f"label column '{label_col}' of {where} holds {feature}; labels must be integer class "
                             "ids (or a ClassLabel)")
        rows = subset_rows(len(dataset), self.max_images, self.split_seed)
        if len(rows) < len(dataset):
            dataset = dataset.select(rows.tolist())
        labels = torch.as_tensor(dataset.with_format("numpy")[label_col][:]).long()  # [N]
        if len(labels) and int(labels.min()) < 0:
            option = "data.split" if split == self.split else "data.eval_split"
            raise ValueError(f"{where} has unlabeled rows (label {int(labels.min())}; datasets marks a split without "
                             f"labels, often 'test', with -1); set {option}=<a labeled split>"
                             + ("" if split == self.split else f" or {option}={HOLDOUT} (hold out data.eval_fraction "
                                                                "of train)"))
        column = ImageColumn(dataset, image_col, self.path, where, rows)
        captions = None
        if self.caption_column is not None:
            captions = CaptionColumn(dataset, pick_column(dataset, self.caption_column, (), "caption_column", where),
                                     where)
        return (column, labels, captions), feature.num_classes if isinstance(feature, ClassLabel) else None

    def fingerprint(self) -> dict:
        return {"name": "hf_disk", "path": str(self.path), "image_size": self.image_size,
                "preprocessing": PREPROCESSING, "channels": self.channels,
                "split": self.split, "eval_split": self.eval_split, "eval_fraction": self.eval_fraction,
                "split_seed": self.split_seed, "max_images": self.max_images, "image_column": self.image_column,
                "label_column": self.label_column, "num_classes": self.num_classes, "num_train": len(self.train_labels),
                "num_eval": len(self.eval_labels), "saved": self.saved_fingerprints}
