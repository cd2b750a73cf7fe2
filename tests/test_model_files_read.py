"""The model files a computation read (cache entries, checkpoints) are recorded with their stamps, and a study's
judgement whose files have changed since (a cache rebuilt under the same names) is made again."""

import json
import os

import torch

from rlar.eval.evaluate import JUDGE_METRICS
from rlar.runtime.cache import cached_artifact, load_checkpoint
from rlar.runtime.files_read import file_stamps, model_files_read, stamps_hold
from rlar.studies.judged import read_or_judge


def built(checkpoint):
    return {"w": torch.ones(2)}, {}


def test_cache_entries_built_or_loaded_and_checkpoints_are_recorded_once_each(tmp_path):
    user = tmp_path / "user.pt"
    torch.save({"w": torch.zeros(1)}, user)
    with model_files_read() as read:
        _, entry = cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # a miss: built here
        cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # a hit: loaded
        load_checkpoint(user, "policy.checkpoint")
    assert read == [entry.absolute(), user.absolute()]
    with model_files_read() as other:
        cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)
    assert other == [entry.absolute()] and read == [entry.absolute(), user.absolute()]  # each its own record
    cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # outside a record: nothing kept, nothing fails


def test_stamps_hold_until_a_file_is_written_again(tmp_path):
    entry = tmp_path / "gpt_prior-abc.pt"
    entry.write_bytes(b"weights")
    stamps = file_stamps([entry])
    assert stamps_hold(stamps) and stamps_hold([])
    os.utime(entry, ns=(5, 5))  # rebuilt under its name
    assert not stamps_hold(stamps)
    entry.unlink()
    assert not stamps_hold(stamps)
    assert not stamps_hold(None) and not stamps_hold("x") and not stamps_hold([["a", 1]])  # nothing to check


def test_a_judgement_is_made_again_when_a_model_file_it_read_has_changed(tmp_path, monkeypatch):
    entry, path = tmp_path / "gpt_prior-abc.pt", tmp_path / "judge" / "judge.json"
    entry.write_bytes(b"weights")
    calls = []

    def judge(argv):  # stands in for rlar-eval --judge: records the stamps of the files it read
        calls.append(argv)
        metrics = {f"eval/{m}": {"mean": float(len(calls))} for m in JUDGE_METRICS}
        path.write_text(json.dumps({"model_files": file_stamps([entry]), "metrics": metrics}))

    monkeypatch.setattr("rlar.studies.judged.run_command", judge)
    path.parent.mkdir()
    path.write_text(json.dumps({"metrics": {f"eval/{m}": {"mean": 0.0} for m in JUDGE_METRICS}}))
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 1.0  # recorded no files: cannot be checked
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 1.0 and len(calls) == 1  # read back
    os.utime(entry, ns=(5, 5))  # the cache rebuilt: the same entry name, other weights
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 2.0 and len(calls) == 2
