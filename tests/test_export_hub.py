"""``rlar-export --push-to-hub REPO [--private]`` against a stand-in for ``huggingface_hub`` (no network, and
whether or not the ``hub`` extra is installed)."""

import sys
from types import ModuleType, SimpleNamespace

import pytest

import rlar.export
from rlar.export import main


class FakeHub:
    """The Hub's ``HfApi`` calls that rlar-export makes; ``repos``: repo id -> private, for the repos that exist."""

    def __init__(self, repos: dict[str, bool]):
        self.repos, self.uploads = repos, []

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.repos.setdefault(repo_id, bool(private))  # an existing repo keeps its visibility

    def repo_info(self, repo_id):
        return SimpleNamespace(private=self.repos[repo_id])

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.uploads.append(repo_id)
        return f"https://hub.example/{repo_id}/commit/1"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hub holding the public repo ``me/public`` and the private ``me/secret``; ``rlar-export``'s own export is
    skipped (it writes nothing: the folder is ``tmp_path``)."""
    fake = FakeHub({"me/public": False, "me/secret": True})
    module = ModuleType("huggingface_hub")
    module.HfApi = lambda: fake
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    monkeypatch.setattr(rlar.export, "export_runs", lambda runs, out, weight: tmp_path)
    return fake


def test_private_push_to_an_existing_public_repo_is_refused_before_any_upload(hub):
    with pytest.raises(ValueError, match="me/public already exists and is public.*make the repo private"):
        main(["run", "out", "--push-to-hub", "me/public", "--private"])
    assert hub.uploads == [] and hub.repos["me/public"] is False


@pytest.mark.parametrize("repo, private", [("me/secret", True), ("me/new", True), ("me/public", False)])
def test_push_uploads_to_a_new_repo_a_private_one_or_a_public_one_not_asked_private(hub, capsys, repo, private):
    main(["run", "out", "--push-to-hub", repo, *(["--private"] if private else [])])
    assert hub.uploads == [repo] and f"pushed: https://hub.example/{repo}/commit/1" in capsys.readouterr().out
    assert hub.repos[repo] is (repo != "me/public")
