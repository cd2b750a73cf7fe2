"""The judge's independence: no reward may read the classifier of ``eval/*`` (``eval.classifier_model``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from rlar.config.schemas import EvalClassifierSchema, RewardClassifierSchema
from rlar.eval.model.build import classifier_spec


def rewards_reading_the_judge(cfg: DictConfig) -> list[str]:
    """The config paths (``reward.classifier``, ``reward.components.<name>.classifier``, ...) of every reward
    classifier whose spec (settings over ``RewardClassifierSchema``'s defaults) is the judge's, i.e. the same
    cached model; empty when the judge is off (``eval.classifier=false``) or none is."""
    if not cfg.eval.classifier:
        return []
    judge = classifier_spec(cfg.eval.classifier_model, EvalClassifierSchema)
    found = []

    def visit(node, path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            # a classifier-based reward's node: its classifier settings beside its cache_dir (null = the defaults)
            if key == "classifier" and "cache_dir" in node and isinstance(value, dict | type(None)):
                if classifier_spec(value, RewardClassifierSchema) == judge:
                    found.append(f"{path}.{key}")
            elif key != "data":
                visit(value, f"{path}.{key}")

    visit(OmegaConf.to_container(cfg.reward, resolve=True), "reward")
    return found
