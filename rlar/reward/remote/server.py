"""``rlar-reward-server``: serve one reward built from rlar's Hydra config over HTTP (see docs/remote_rewards.md)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlar.config.store import compose_config
from rlar.reward.build import build_reward
from rlar.reward.remote.app import RewardService, UnservableReward, create_app
from rlar.reward.remote.auth import DEFAULT_TOKEN_ENV, is_loopback, read_token
from rlar.runtime.user_modules import importable

log = logging.getLogger("rlar.reward.remote.server")

# served where the overrides leave the run's default reward, which scores a call's samples together, as a server
# cannot (``rlar.reward.remote.app.check_servable``); this is its term that scores each sample alone
DEFAULT_REWARD = "class_consistency"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rlar-reward-server", description=__doc__)
    p.add_argument("overrides", nargs="*",
                   help=f"Hydra overrides choosing the reward, e.g. reward=ssim (default: reward={DEFAULT_REWARD})")
    p.add_argument("--host", default="127.0.0.1", help="bind address; any non-loopback one needs a token")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, help="environment variable holding the token")
    p.add_argument("--token-file", help="file holding the token (instead of the environment variable)")
    p.add_argument("--max-batch", type=int, default=1024, help="most images per request (422 above)")
    p.add_argument("--max-bytes", type=int, default=256 * 2**20, help="largest request body (413 above)")
    p.add_argument("--max-uploads", type=int, default=4,
                   help="requests held in memory at a time (bodies read, decoded or scored); the rest wait unread")
    p.add_argument("--body-timeout", type=float, default=60.0, help="seconds to receive a request body (408 after)")
    p.add_argument("--keep-alive-timeout", type=int, default=5, help="seconds an idle connection stays open")
    p.add_argument("--warmup-shape", default="2,1,32,32", help="N,C,H,W of the start-up test batch")
    p.add_argument("--log-file", help="log here instead of stderr")
    return p.parse_intermixed_args(argv)


def reward_name(overrides: list[str], target: str) -> str:
    """The ``reward=<name>`` option chosen on the command line, else the reward's ``_target_``."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("reward=")]
    return chosen[-1] if chosen else target


def served_config(overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The config the server composes and the overrides it composes it from: ``overrides``, led by
    ``reward=<DEFAULT_REWARD>`` where they choose neither a reward nor an experiment (which may choose one)."""
    if not any(o.lstrip("+").startswith(("reward=", "experiment=")) for o in overrides):
        overrides = [f"reward={DEFAULT_REWARD}", *overrides]
    return compose_config(overrides), overrides


def main(argv: list[str] | None = None) -> int:
    importable()  # a reward of the user's own, as python -m imports it
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, filename=args.log_file,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_token(args.token_env, args.token_file)
    except OSError as e:
        print(f"rlar-reward-server: cannot read the token file: {e}", file=sys.stderr)
        return 2
    if token is None and not is_loopback(args.host):
        print(f"rlar-reward-server: refusing to listen on {args.host} without a token: a non-loopback address "
              f"needs one (set ${args.token_env} or pass --token-file)", file=sys.stderr)
        return 2
    overrides = args.overrides
    try:
        cfg, overrides = served_config(overrides)
        hardware = instantiate(cfg.hardware)
        hardware.seed_everything()  # as the training loop does before it builds the reward
        reward = build_reward(cfg)
        service = RewardService(reward, reward_name(overrides, cfg.reward._target_), cfg.reward._target_,
                                hardware.device, token, args.max_batch, args.max_bytes, args.max_uploads,
                                args.body_timeout)
        service.warm_up(tuple(int(s) for s in args.warmup_shape.split(",")))
    except UnservableReward as e:  # refused by what it is, or by what its test batch changed in it
        print(f"rlar-reward-server: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bad override, or a reward that cannot be built or fails its test batch
        print(f"rlar-reward-server: cannot build the reward from {overrides} and score a --warmup-shape "
              f"{args.warmup_shape} batch: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    log.info("serving %s (%s) on http://%s:%d, token %s", service.name, ", ".join(sorted(service.components)),
             args.host, args.port, "required" if token else "off (loopback)")
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_config=None,
                timeout_keep_alive=args.keep_alive_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
