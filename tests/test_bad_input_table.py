"""The "Bad input" table of docs/configuration.md, checked row by row: each row marked ``here`` holds overrides in
its first cell and, as the first quoted fragment of its second cell, a piece of the error those overrides get. The
table is the test's data, so the docs and the code cannot drift apart."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import open_dict

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config, check_sizes, reward_nodes
from rlar.loop import progress_metrics
from rlar.reward.mixture import WeightedReward, zscored
from rlar.reward.quality import SharpnessReward

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
QUOTED = re.compile(r"`([^`]+)`")


def table_rows() -> list[list[str]]:
    """The cells of every row of the "Bad input" table (not its header and separator)."""
    text = DOC.read_text()
    section = text[text.index("### Bad input"):]
    section = section[:section.index("\n## ")]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # rows[0]: the header; the separator starts "|-"


def checked_rows() -> list[tuple[list[str], str]]:
    """``(overrides, fragment)`` of the rows checked here."""
    cases = []
    for input_cell, outcome, checked_by in table_rows():
        if checked_by.split(" ")[0] != "here":
            continue
        cases.append((QUOTED.search(input_cell).group(1).split(), QUOTED.search(outcome).group(1)))
    return cases


def error_of(overrides: list[str]) -> str:
    """The message of the error ``overrides`` get: at compose time, from ``check_config``, or when the data or the
    reward they choose is built (``python -m rlar.run`` builds both before any training)."""
    try:
        cfg = compose_config(overrides)
        check_config(cfg)
        for group in ("data", "reward"):
            if any(o.startswith((f"{group}=", f"{group}.")) for o in overrides):
                instantiate(cfg[group])
    except InstantiationException as e:
        return str(e.__cause__ or e)
    except (HydraException, ConfigError, ValueError, FileNotFoundError) as e:
        return str(e)
    pytest.fail(f"{overrides} raised no error")


def test_the_table_is_long_and_most_rows_are_checked_here():
    assert len(table_rows()) >= 40
    assert len(checked_rows()) >= 40
    assert all(len(row) == 3 for row in table_rows())


@pytest.mark.parametrize("overrides,fragment", checked_rows(), ids=lambda v: " ".join(v) if isinstance(v, list)
                         else "")
def test_each_bad_input_gets_the_documented_error(overrides, fragment, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # the torchrun rows: a plain process
        monkeypatch.delenv(var, raising=False)
    if "CUDA is not available" in fragment and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert fragment in error_of(overrides)


def test_score_chunks_are_refused_only_where_a_mix_z_scores_over_the_call():
    """A reward whose config builds a helper with an option named normalize z-scores nothing: chunks are scored as
    the whole batch is."""
    cfg = compose_config(["train.score_chunk_size=32"])
    with open_dict(cfg):  # a user's reward config, no schema of rlar's
        cfg.reward = {"_target_": "rlar.reward.quality.SharpnessReward",
                      "backbone": {"_target_": "torch.nn.LayerNorm", "normalized_shape": 3, "normalize": True}}
    assert [path for path, _ in reward_nodes(cfg)] == ["reward", "reward.backbone"]
    check_sizes(cfg)



class ZScoredMix(WeightedReward):
    """A user's subclass of the mix: its ``normalize`` z-scores over the call as the mix's does."""


class ScaledSharpness(SharpnessReward):
    """A user's reward with a ``normalize`` option of its own (here: divide by 2), nothing z-scored."""

    def __init__(self, normalize: bool = False):
        super().__init__()
        self.normalize = normalize


def test_z_scoring_is_read_from_the_reward_class_not_from_an_option_named_normalize():
    """A subclass of the mix is refused score chunks as the mix is, and the progress bar shows its terms; a reward
    whose own ``normalize`` means something else takes chunks, and the bar shows its mean (not ``reward.weights``,
    which it has none of)."""
    cfg = compose_config(["train.score_chunk_size=32"])
    with open_dict(cfg):
        cfg.reward._target_ = f"{__name__}.ZScoredMix"
    assert zscored(cfg.reward)
    with pytest.raises(ConfigError, match="this reward z-scores its terms over each call"):
        check_sizes(cfg)
    with open_dict(cfg):
        cfg.reward = {"_target_": f"{__name__}.ScaledSharpness", "normalize": True}
    assert not zscored(cfg.reward)
    check_sizes(cfg)
    run = SimpleNamespace(cfg=cfg, algorithm=SimpleNamespace(trains_on_data=False))
    assert progress_metrics(run) == ("reward/mean",)

def test_under_torchrun_the_minibatches_split_each_process_s_share(monkeypatch):
    """Each of torchrun's processes updates on its own share of the global batch, so that share must split into
    minibatches (the table's row for 8 processes); a global batch that does not split over the processes is
    refused when the run is built, with its own message."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    ddp = ["hardware=ddp", "hardware.device=cpu", "hardware.precision=fp32"]
    assert "train.batch_size / 8 processes * num_generations = 24 sequences per process do not split" in error_of(
        [*ddp, "train.batch_size=24", "algorithm.minibatch_size=16"])
    check_config(compose_config([*ddp, "train.batch_size=16", "algorithm.minibatch_size=16"]))  # 2 x 8 = 16
