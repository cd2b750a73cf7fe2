"""An image folder is listed from its folders' entries: the files rglob would find, in the same order, with no stat
call per file (a million-file split on a network file system pays one per file)."""

import os
from pathlib import Path

import rlar.data.image_folder
from rlar.data.image_folder import EXTENSIONS, image_files


def rglob_listing(root: Path, classes: list[str]) -> list[Path]:
    """Every image file under root/<class>, by rglob and is_file, sorted, but those with a hidden name or under a
    hidden folder (``.ipynb_checkpoints``' copies)."""
    return [p for name in classes for p in sorted(q for q in (root / name).rglob("*")
                                                  if q.is_file() and q.suffix.lower() in EXTENSIONS
                                                  and not any(part.startswith(".")
                                                              for part in q.relative_to(root).parts))]


def test_the_listing_is_rglobs_without_a_stat_per_file(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for path in ("a/1.png", "a/sub/2.PNG", "a/sub/deeper/3.jpg", "a/.hidden.png", "a/.cache/4.png", "a/notes.txt",
                 "a/sub-x/5.png", "b/6.webp", "elsewhere/7.png", "elsewhere/dir/8.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")
    (root / "b" / "linked.png").symlink_to(root / "a" / "1.png")  # a link to a file: listed
    (root / "b" / "broken.png").symlink_to(root / "gone.png")  # a broken link: left out
    (root / "b" / "linked_dir").symlink_to(root / "elsewhere" / "dir")  # a link to a folder: not followed
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(rlar.data.image_folder.os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    files, labels = image_files(root, ["a", "b"], {"a": 0, "b": 1})
    assert stats == []
    monkeypatch.undo()
    assert files == rglob_listing(root, ["a", "b"])
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a/1.png", "a/sub/2.PNG", "a/sub/deeper/3.jpg", "a/sub-x/5.png", "b/6.webp", "b/linked.png"]
    assert labels == [0, 0, 0, 0, 1, 1]
