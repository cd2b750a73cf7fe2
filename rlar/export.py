"""``rlar-export RUN_DIR OUT_DIR [--push-to-hub REPO]`` (or ``python -m rlar.export``): a run's policy as a
shareable folder (``model.safetensors`` + ``config.json``), loadable as ``policy.checkpoint=OUT_DIR``, optionally
uploaded to the Hugging Face Hub.

The policy is rebuilt as the run built it (its ``.hydra/config.yaml``: data, tokenizer, policy) and loaded
strictly from the run's last checkpoint, so the folder holds what the run trained, checked against its config: the
moving average of its weights when the run kept one (``train.ema_decay``), as its evaluations did.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlar.policy.exported import write_policy_folder
from rlar.runtime.ema import exported_policy
from rlar.text.build import build_text_encoder
from rlar.tokenizer.zoo_build import strict_load


def run_policy_weights(run_dir: Path) -> Path:
    """The file holding the run's final policy: ``checkpoints/policy.pt`` (a sharded run's export at its end),
    else ``checkpoints/last.pt`` (consolidated)."""
    for name in ("policy.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise FileNotFoundError(f"{run_dir} has no checkpoints/last.pt: give the output directory of an rlar run")


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the policy of the run in ``run_dir`` to ``out_dir``; returns ``out_dir``."""
    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: give the output directory of an rlar run")
    cfg = OmegaConf.load(config_file)
    if cfg.rollout.mode == "schedule":
        raise ValueError("rollout.mode=schedule trains a decoding-schedule network over a frozen ARPG; rlar-export "
                         "exports gpt, llamagen and arpg policies")
    cfg.policy.checkpoint = str(run_policy_weights(run_dir))
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    # built and checked as the run built it
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=build_text_encoder(cfg))
    strict_load(policy, exported_policy(run_dir / "checkpoints"), f"the policy of {run_dir}")  # its EMA, if kept
    return write_policy_folder(policy, OmegaConf.to_container(cfg.policy, resolve=True), out_dir)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hugging Face Hub model repository ``repo_id`` (created if needed; ``hf auth login``
    first); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="rlar-export"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlar-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the output directory of an rlar run (outputs/<name>/<overrides>)")
    parser.add_argument("out_dir", help="the folder to write: model.safetensors and config.json")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo (user/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    out = export_run(args.run_dir, args.out_dir)
    print(f"exported: {out} (load it with policy.checkpoint={out})")
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(out, args.push_to_hub, args.private)}")


if __name__ == "__main__":
    main()
