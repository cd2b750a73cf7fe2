"""``data=image_folder`` takes ``data.num_classes``, so the LlamaGen recipe (``data.num_classes: 1000``) composes with
it and a released model's class table keeps its size."""

import pytest
from PIL import Image

from rlar.config.store import compose_config
from rlar.data.image_folder import ImageFolderData


@pytest.fixture
def two_classes(tmp_path):
    for name in ("n01440764", "n01443537"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_the_recipe_composes_with_an_image_folder(two_classes):
    cfg = compose_config(["experiment=vapi_llamagen_xxl", "data=image_folder", f"data.root={two_classes}"])
    assert cfg.data.num_classes == 1000


def test_num_classes_sizes_the_class_table_and_ids_follow_the_folders(two_classes):
    data = ImageFolderData(str(two_classes), image_size=8, num_classes=1000, eval_fraction=0.34)
    assert data.num_classes == 1000 and data.fingerprint()["num_classes"] == 1000
    assert sorted(set(data.train_labels.tolist()) | set(data.eval_labels.tolist())) == [0, 1]
    assert ImageFolderData(str(two_classes), image_size=8, eval_fraction=0.34).num_classes == 2


def test_fewer_classes_than_folders_are_refused(two_classes):
    with pytest.raises(ValueError, match="data.num_classes=1"):
        ImageFolderData(str(two_classes), image_size=8, num_classes=1, eval_fraction=0.34)
