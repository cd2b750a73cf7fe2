"""``rlar-export RUN_DIR [RUN_DIR ...] OUT_DIR [--weight W] [--push-to-hub REPO]`` (or ``python -m rlar.export``): a
run's policy, or the weight soup of several runs, as a shareable folder (``model.safetensors`` + ``config.json``),
loadable as ``policy.checkpoint=OUT_DIR``, optionally uploaded to the Hugging Face Hub.

The policy is rebuilt as the run built it (its ``.hydra/config.yaml``: data, tokenizer, policy) and loaded
strictly from the run's last checkpoint, so the folder holds what the run trained, checked against its config: the
moving average of its weights when the run kept one (``train.ema_decay``), as its evaluations did. Several runs of
one prior (seeds, say) give their soup, ``prior + W * (average - prior)`` (``rlar.policy.soup``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlar.eval.run_models import anchor_relative_paths, is_run_dir, started_folder
from rlar.policy.exported import write_policy_folder
from rlar.policy.soup import weight_soup
from rlar.runtime.checkpoint import SHARDS
from rlar.runtime.ema import exported_policy, no_checkpoint_message, unfinished_shards_message
from rlar.runtime.user_modules import importable
from rlar.text.build import build_text_encoder
from rlar.tokenizer.zoo_build import strict_load


def run_policy_weights(run_dir: Path) -> Path:
    """The file holding the run's final policy: ``checkpoints/policy.pt`` (a sharded run's export at its end),
    else ``checkpoints/last.pt`` (consolidated); a sharded run stopped before its end has neither."""
    checkpoints = run_dir / "checkpoints"
    if not (checkpoints / "last.pt").is_file():  # every saved run has it (a sharded one: its record)
        raise FileNotFoundError(no_checkpoint_message(run_dir))
    if (checkpoints / "policy.pt").is_file():
        return checkpoints / "policy.pt"
    if any(SHARDS.fullmatch(path.name) for path in checkpoints.iterdir() if path.is_dir()):
        raise FileNotFoundError(unfinished_shards_message(checkpoints))
    return checkpoints / "last.pt"


def recorded_config(run_dir: Path):
    """The config a run recorded (``.hydra/config.yaml``), refused for a decoding-schedule run."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: give the output directory of an rlar run")
    cfg = OmegaConf.load(config_file)
    anchor_relative_paths(cfg, run_dir)  # read from any directory: the files the run read
    if cfg.rollout.mode == "schedule":
        raise ValueError("rollout.mode=schedule trains a decoding-schedule network over a frozen ARPG; rlar-export "
                         "exports gpt, llamagen and arpg policies")
    return cfg


def export_runs(run_dirs: list[str | Path], out_dir: str | Path, weight: float = 1.0) -> Path:
    """Write the policy of the run in ``run_dirs`` (one), or the weight soup of several (``rlar.policy.soup``:
    ``prior + weight * (average - prior)``), to ``out_dir``; returns ``out_dir``. The runs must share their data,
    tokenizer, policy and text encoder config, so that they were fine-tuned from one prior."""
    run_dirs = [Path(r) for r in run_dirs]
    cfg, *others = [recorded_config(r) for r in run_dirs]
    for run_dir, other in zip(run_dirs[1:], others, strict=True):
        for group in ("data", "tokenizer", "policy", "text_encoder"):  # the text encoder keys a text prior too
            if other.get(group) != cfg.get(group):
                raise ValueError(f"{run_dir} has another {group} config than {run_dirs[0]}: a soup averages runs "
                                 "fine-tuned from one prior, on the same data and tokenizer")
    weights = [run_policy_weights(r) for r in run_dirs]  # every run has saved, before anything is built
    folder = cfg.policy.get("checkpoint")
    if weight == 1.0 and not (folder and Path(folder).expanduser().is_dir()):
        # the prior is not read: build the policy from the run's weights (no pretraining on a miss); an exported
        # folder stays, for the text encoder it may carry (the run's weights replace its policy below)
        cfg.policy.checkpoint = str(weights[0])
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    # built and checked as the run built it: with a weight other than 1, the prior the runs started from
    text_encoder = build_text_encoder(cfg)
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=text_encoder)
    policies = [exported_policy(r / "checkpoints") for r in run_dirs]  # each run's EMA, if kept
    if len(run_dirs) == 1 and weight == 1.0:
        strict_load(policy, policies[0], f"the policy of {run_dirs[0]}")
        return write_policy_folder(policy, OmegaConf.to_container(cfg.policy, resolve=True), out_dir,
                                   text_encoder=text_encoder)
    prior = None if weight == 1.0 else policy.state_dict()  # read in full by weight_soup before the load below
    strict_load(policy, weight_soup(policies, [str(r) for r in run_dirs], weight, prior),
                f"the soup of {len(run_dirs)} runs")
    recipe = {"runs": [str(r.resolve()) for r in run_dirs], "weight": weight}
    return write_policy_folder(policy, OmegaConf.to_container(cfg.policy, resolve=True), out_dir, soup=recipe,
                               text_encoder=text_encoder)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hugging Face Hub model repository ``repo_id`` (created if needed; ``hf auth login``
    first); returns the commit URL. With ``private``, an existing public repo is refused before any upload."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private:
        check_private(api, repo_id)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="rlar-export"))


def check_private(api, repo_id: str) -> None:
    """Refuses ``repo_id`` unless the Hub says it is private: ``create_repo(private=True, exist_ok=True)`` leaves
    an existing repo's visibility as it was."""
    if not api.repo_info(repo_id).private:
        raise ValueError(f"--private was given, but the Hub repo {repo_id} already exists and is public: nothing was "
                         "uploaded; make the repo private in its settings on the Hub, or push to a new repo name")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlar-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR [RUN_DIR ...] OUT_DIR",
                        help="the output directory of an rlar run (outputs/<name>/<overrides>), or of several for "
                             "their weight soup; then the folder to write: model.safetensors and config.json")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="the soup's share of the runs' average: prior + weight * (average - prior); 1 (the "
                             "default) is the average itself, below 1 moves toward the prior the runs started from")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo (user/name)")
    parser.add_argument("--private", action="store_true",
                        help="create the Hub repo private (an existing public one is refused)")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give RUN_DIR (one or more) then OUT_DIR")
    if not math.isfinite(args.weight):
        parser.error(f"--weight {args.weight}: a soup's weight is a finite number (1: the runs' average)")
    importable(*(started_folder(p) for p in args.paths[:-1] if is_run_dir(p)))  # the runs' own modules
    try:
        out = export_runs(args.paths[:-1], args.paths[-1], args.weight)
    except FileNotFoundError as e:  # a run dir without its config or its checkpoint: the message says which
        parser.exit(1, f"rlar-export: {e}\n")
    print(f"exported: {out} (load it with policy.checkpoint={out})")
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(out, args.push_to_hub, args.private)}")


if __name__ == "__main__":
    main()
