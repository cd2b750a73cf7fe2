"""``python -m rlar.prepare [overrides]``: train (or find) the cached tokenizer, prior, judge and reward classifier,
without RL."""

from __future__ import annotations

from contextlib import closing

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlar.config.store import CONF_DIR, register_schemas
from rlar.config.validate import check_config, exit_on_config_error
from rlar.eval.model.build import build_eval_classifier
from rlar.reward.build import build_reward, reads_data
from rlar.reward.classifier import asked_classifiers, build_classifiers
from rlar.runtime.files_read import entries_read
from rlar.runtime.user_modules import importable
from rlar.text.build import build_text_encoder

register_schemas()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    importable()  # a _target_ of the user's own, as python -m imports it
    with exit_on_config_error():  # refused before anything is trained, but the settings only RL updates read
        check_config(cfg, trains=False)
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    with entries_read() as read:
        instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=build_text_encoder(cfg))
    psnr = tokenizer.metrics.get("psnr_db")
    print(f"tokenizer: {tokenizer.source}" + (f" (held-out PSNR {psnr:.2f} dB)" if psnr is not None else ""))
    if read:  # the cached prior: other settings start from it with policy.checkpoint=<it>
        print(f"prior: {read[-1]}; `python -m rlar.run` with the same settings starts from it")
    else:
        print(f"prior: policy.checkpoint={cfg.policy.get('checkpoint')}")
    if cfg.eval.classifier:  # the judge of eval/fd and the other eval/* metrics
        judge = build_eval_classifier(data, cfg.cache_dir, cfg.eval.classifier_model)
        print(f"judge: {judge.source} (held-out accuracy {judge.metrics['eval_accuracy']:.4f})")
    if reads_data(OmegaConf.to_container(cfg.reward, resolve=True), None):  # the run's data or its own
        with asked_classifiers() as asked, closing(build_reward(cfg, data)):
            for source in build_classifiers(asked):  # a reward's own classifier (never the judge)
                print(f"reward classifier: {source}")


if __name__ == "__main__":
    main()
