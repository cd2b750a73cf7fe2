"""The cache entries a computation read are recorded with stamps of their content, and a study's judgement whose
entries have changed since (a cache rebuilt under the same names to other weights) is made again."""

import json
import os

import torch

from rlar.eval.evaluate import JUDGE_METRICS
from rlar.runtime.cache import cached_artifact
from rlar.runtime.files_read import content_stamps, entries_read, file_sha256, stamps_hold
from rlar.studies.judged import read_or_judge


def built(checkpoint):
    return {"w": torch.ones(2)}, {}


def test_cache_entries_built_or_loaded_are_recorded_once_each(tmp_path):
    with entries_read() as read:
        _, entry = cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # a miss: built here
        cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # a hit: loaded
        _, other = cached_artifact(tmp_path / "cache", "judge", {"n": 2}, built)
    assert read == [entry.absolute(), other.absolute()]
    with entries_read() as again:
        cached_artifact(tmp_path / "cache", "judge", {"n": 2}, built)
    assert again == [other.absolute()] and len(read) == 2  # each record its own
    cached_artifact(tmp_path / "cache", "prior", {"n": 1}, built)  # outside a record: nothing kept, nothing fails


def test_stamps_hold_until_the_content_changes(tmp_path):
    entry = tmp_path / "gpt_prior-abc.pt"
    entry.write_bytes(b"weights")
    stamps = content_stamps([entry])
    assert stamps == [[str(entry), 7, file_sha256(entry)]] and stamps_hold(stamps) and stamps_hold([])
    os.utime(entry, ns=(5, 5))
    entry.write_bytes(b"weights")  # built again to the same bytes
    assert stamps_hold(stamps)
    entry.write_bytes(b"weightz")  # built again to other weights, of the same size
    assert not stamps_hold(stamps)
    entry.unlink()
    assert not stamps_hold(stamps)
    assert not stamps_hold(None) and not stamps_hold("x") and not stamps_hold([["a", 1]])  # nothing to check


def test_a_judgement_is_made_again_when_a_cache_entry_it_read_has_changed(tmp_path, monkeypatch):
    entry, path = tmp_path / "gpt_prior-abc.pt", tmp_path / "judge" / "judge.json"
    entry.write_bytes(b"weights")
    calls = []

    def judge(argv):  # stands in for rlar-eval --judge: records the stamps of the entries it read
        calls.append(argv)
        metrics = {f"eval/{m}": {"mean": float(len(calls))} for m in JUDGE_METRICS}
        path.write_text(json.dumps({"cache_entries": content_stamps([entry]), "metrics": metrics}))

    monkeypatch.setattr("rlar.studies.judged.run_command", judge)
    path.parent.mkdir()
    path.write_text(json.dumps({"metrics": {f"eval/{m}": {"mean": 0.0} for m in JUDGE_METRICS}}))
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 1.0  # recorded no entries: cannot be checked
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 1.0 and len(calls) == 1  # read back
    entry.write_bytes(b"other weights")  # the cache rebuilt: the same entry name, other weights
    assert read_or_judge(path, ["PRIOR"])["eval/fd"]["mean"] == 2.0 and len(calls) == 2
