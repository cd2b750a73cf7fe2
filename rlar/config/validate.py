"""Checks that need no work done: run before anything is trained or built."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from rlar.algorithm.update import groups_per_minibatch, recomputes_old_logprobs
from rlar.config.schemas import RolloutSchema, ScheduleSchema
from rlar.config.validate_shapes import data_channels, has_images, tokenizer_channels, tokens_per_image
from rlar.eval.evaluate import ATTRIBUTE_METRICS, HEADLINE_METRICS, JUDGE_METRICS
from rlar.eval.image_arrays import check_npz_reference
from rlar.eval.inception import POOL_WIDTH, default_weights_path, missing_weights_message
from rlar.eval.inception_metrics import check_reference_size
from rlar.eval.model.independence import rewards_reading_the_judge
from rlar.policy.exported import carries_text_encoder
from rlar.policy.gpt import CONDITION_MODES
from rlar.reward.mixture import zscored
from rlar.rollout.collect import MODES as ROLLOUT_MODES
from rlar.rollout.parallel_decoding import CFG_SCHEDULES, SCHEDULES
from rlar.runtime.checkpoint import FORMATS as CHECKPOINT_FORMATS
from rlar.runtime.distributed import env_world_size
from rlar.runtime.ema import check_decay
from rlar.runtime.optimizer import build_optimizer


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


@contextlib.contextmanager
def exit_on_config_error(*also: type[Exception]):
    """For a command line: a ``ConfigError`` (or one of ``also``) raised inside exits with ``config error: ...``."""
    try:
        yield
    except (ConfigError, *also) as e:
        sys.exit(f"config error: {e}")


def target_attribute(node: dict, name: str, default=None):
    """The class attribute ``name`` of the class that ``node`` instantiates (its ``_target_``), without building it."""
    return getattr(get_object(node["_target_"]), name, default)


MIN_TEMPERATURE = 1e-5  # the smallest sampling temperature: logits / T stay finite in fp32 and bf16


def check_temperature(value: float | None, name: str) -> None:
    """Refuse (``ConfigError``) a sampling temperature ``value`` (given as ``name``) below :data:`MIN_TEMPERATURE`;
    None (not given) passes."""
    if value is not None and not value >= MIN_TEMPERATURE:
        raise ConfigError(f"{name} must be >= {MIN_TEMPERATURE:g} (below it the logits overflow to NaN; "
                          f"rollout.top_k=1 samples greedily), got {value}")


def check_config(cfg: DictConfig, inception_eval: bool = True, trains: bool = True) -> None:
    """Raise ``ConfigError`` naming the bad value and the fix. ``inception_eval=False``: for a command that never runs
    ``eval.inception`` (``rlar-eval``), whose weights and reference are then not checked. ``trains=False``: for a
    command that runs no RL update (evaluation, ``rlar-prepare``): the settings that only the update reads wrongly
    (dropout, a critic over teacher-forced rollouts, REINFORCE's ``grad_accum``) are then not refused."""
    built = {}
    for group in ("algorithm", "hardware", "logger"):  # cheap objects whose constructors check their values
        try:
            built[group] = instantiate(cfg[group])
        except InstantiationException as e:
            raise ConfigError(str(e.__cause__ or e)) from e
    try:  # the lr schedule checks its values when built, here on an optimizer of one parameter
        schedule = instantiate(cfg.scheduler, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    except InstantiationException as e:
        raise ConfigError(str(e.__cause__ or e)) from e
    check_schedule_steps(schedule, cfg.scheduler._target_)
    try:
        check_decay(cfg.train.ema_decay)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.rollout.mode not in ROLLOUT_MODES:
        raise ConfigError(f"rollout.mode={cfg.rollout.mode!r} is not available; choose one of {ROLLOUT_MODES}")
    r = cfg.rollout
    updates = trains and cfg.train.iterations > 0  # an RL update will run
    if (r.mode == "prefix") != (r.prefix_len > 0):
        raise ConfigError(f"rollout.prefix_len={r.prefix_len} with rollout.mode={r.mode!r}: mode=prefix needs "
                          "prefix_len >= 1, and the other modes take no prefix (set prefix_len=0)")
    if r.cfg_interval is not None and not (len(r.cfg_interval) == 2 and 0 <= r.cfg_interval[0] < r.cfg_interval[1]):
        raise ConfigError(f"rollout.cfg_interval must be [lo, hi) with 0 <= lo < hi, got {list(r.cfg_interval)}")
    tokens = tokens_per_image(cfg)
    if tokens is not None and r.prefix_len >= tokens:
        raise ConfigError(f"rollout.prefix_len={r.prefix_len} leaves none of the {tokens} tokens per image of the "
                          f"tokenizer to sample; set rollout.prefix_len < {tokens}")
    if updates and r.mode == "teacher_forced" and cfg.algorithm.get("value_head"):
        raise ConfigError("algorithm.value_head=true with rollout.mode=teacher_forced: every sampled token follows the "
                          "ground-truth prefix, so the G samples of an item share every state the critic sees, and "
                          "GAE scales token t's signal by (gamma * gae_lambda)^(T-1-t); set algorithm.value_head=false "
                          "(PPO's group or batch advantages)")
    check_channels(cfg)
    for key in ("token_noise_prob", "label_dropout"):
        if not 0.0 <= r[key] < 1.0:
            raise ConfigError(f"rollout.{key} must be in [0, 1), got {r[key]}")
    check_parallel_decoding(cfg)
    check_unread_rollout_options(cfg)
    check_unread_schedule_options(cfg)
    check_text_conditioning(cfg)
    if inception_eval:
        check_inception_eval(cfg)
    check_optimized_metric(cfg)
    check_data_without_images(cfg)
    check_reward_arguments(cfg)
    check_step_rewards(cfg)
    check_sizes(cfg)
    if trains:  # a command that trains nothing builds no optimizer (a run's may not be installed where it is judged)
        check_optimizer(cfg.optimizer)
    if readers := rewards_reading_the_judge(cfg):
        raise ConfigError(f"{', '.join(readers)} is the judge's classifier (eval.classifier_model: the same spec, the "
                          "same cached model), so the reward would train against eval/fd and eval/class_acc; give the "
                          "reward its own (e.g. another classifier.train.seed than eval.classifier_model.train.seed)")
    check_temperature(cfg.rollout.temperature, "rollout.temperature")
    codebook = cfg.tokenizer.get("codebook_size")
    if codebook is not None and cfg.policy.vocab_size != codebook:
        raise ConfigError(
            f"policy.vocab_size={cfg.policy.vocab_size} does not match the tokenizer's codebook "
            f"(tokenizer.codebook_size={codebook}); set policy.vocab_size={codebook} or leave it as "
            "${tokenizer.codebook_size}"
        )
    for key in ("tokenizer.checkpoint", "policy.checkpoint"):
        group, name = key.split(".")
        path = cfg[group].get(name)
        exported = group == "policy" and bool(path) and Path(path).expanduser().is_dir()  # a folder of rlar-export
        if path and not (Path(path).expanduser().is_file() or exported):
            raise ConfigError(f"{key}='{path}' does not exist; give the path of a saved checkpoint (for the "
                              f"embedded {group}, {key}=null trains one and caches it)")
    if built["algorithm"].trains_on_data:
        check_data_pairs(cfg)
    else:
        if updates and getattr(built["algorithm"], "steps_once", False) and cfg.algorithm.grad_accum != 1:
            raise ConfigError(f"algorithm.grad_accum={cfg.algorithm.grad_accum} does not apply to "
                              f"{type(built['algorithm']).__name__}: it steps once per rollout, on the mean gradient "
                              "of all its minibatches; leave it at 1")
        check_sampler_correction(cfg, updates)
        check_condition_keys(cfg)
        dropout = cfg.policy.get("dropout") or 0.0
        if updates and dropout > 0:
            raise ConfigError(f"policy.dropout={dropout} with {type(built['algorithm']).__name__}: the update "
                              "re-scores the samples with dropout on, so its ratio and KL are not the sampler's; set "
                              "policy.dropout=0 (a prior pretrained with dropout: rlar-prepare "
                              f"policy.dropout={dropout} caches it, then give its cache entry as policy.checkpoint)")
        g, world, mb = cfg.algorithm.num_generations, env_world_size(), cfg.algorithm.minibatch_size
        sequences = cfg.train.batch_size // world * g  # each process updates on its own share (a global batch
        # that does not split over the processes is refused when the run is built)
        if sequences % mb and mb < sequences:
            per_process = f" / {world} processes" if world > 1 else ""
            raise ConfigError(f"train.batch_size{per_process} * num_generations = {sequences} sequences per process "
                              f"do not split into minibatches of algorithm.minibatch_size={mb}")
        if updates:
            check_target_kl(cfg.algorithm, built["algorithm"], sequences)
    if cfg.eval.max_items is not None and cfg.eval.max_items < 2:
        raise ConfigError(f"eval.max_items must be >= 2 (a Fréchet distance fits a covariance; null = the whole "
                          f"held-out split), got {cfg.eval.max_items}")
    if cfg.train.max_grad_norm is not None and cfg.train.max_grad_norm <= 0:
        raise ConfigError(f"train.max_grad_norm must be > 0 (null = no clipping), got {cfg.train.max_grad_norm}")
    if cfg.train.iterations < 0:
        raise ConfigError(f"train.iterations must be >= 0 (0 evaluates the prior only), got {cfg.train.iterations}")
    if trains and cfg.train.iterations == 0 and cfg.train.warmup_steps > 0:
        raise ConfigError(f"train.warmup_steps={cfg.train.warmup_steps} with train.iterations=0: the warm-up would be "
                          "trained and thrown away (a run saves at its iterations) and the prior reported as after "
                          "it; set train.iterations>=1, or train.warmup_steps=0 to evaluate the prior only")
    for key in ("train.batch_size", "train.checkpoint_every", "eval.every", "eval.batch_size",
                "train.max_nonfinite_iterations"):
        group, name = key.split(".")
        if cfg[group][name] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[group][name]}")
    check_group_statistics(cfg)


def check_condition_keys(cfg: DictConfig) -> None:
    """Per-condition statistics (GRPO's ``group_by=condition``, REINFORCE's ``baseline=condition``) keyed by class
    (``stats_key=class``) are refused where the policy is conditioned on captions: the class is not the prompt (every
    prompt of ``data=prompts`` has class -1, so the whole batch would be one condition)."""
    a = cfg.algorithm
    option = next((f"{key}=condition" for key in ("group_by", "baseline") if a.get(key) == "condition"), None)
    if option and cfg.get("text_encoder") is not None and a.get("stats_key", "class") == "class":
        raise ConfigError(f"algorithm.{option} with algorithm.stats_key=class keys each item's statistics by its class "
                          "label, and a text_encoder conditions the policy on captions (data=prompts: class -1 for "
                          "every prompt, one condition for the whole batch); set algorithm.stats_key=image (each "
                          "item's own prompt), or the option's default")


def check_target_kl(options: DictConfig, algorithm, sequences: int) -> None:
    """``algorithm.target_kl`` never stops the first optimizer step of an update: refused where each update takes one
    (``sequences`` per process in minibatches of whole groups, ``epochs`` passes, a step every ``grad_accum``)."""
    target_kl = options.get("target_kl")
    if target_kl is None:
        return
    groups = sequences // options.num_generations
    minibatches = options.epochs * math.ceil(groups / groups_per_minibatch(options.num_generations,
                                                                           options.minibatch_size))
    accum = minibatches if getattr(algorithm, "steps_once", False) else options.grad_accum
    if math.ceil(minibatches / accum) < 2:
        raise ConfigError(f"algorithm.target_kl={target_kl:g} skips an optimizer step after the first, and each update "
                          f"here takes one ({sequences} sequences per process in {minibatches} minibatch(es) of "
                          f"algorithm.minibatch_size={options.minibatch_size} over algorithm.epochs={options.epochs}, "
                          f"a step every {accum}): lower algorithm.minibatch_size or grad_accum, raise "
                          "algorithm.epochs, or set algorithm.target_kl=null")


def check_sampler_correction(cfg: DictConfig, updates: bool) -> None:
    """``algorithm.sampler_correction_cap`` weighs the gap between the sampler's log-probs and the update's recomputed
    ones: refused where the update keeps the sampler's (every weight would be 1)."""
    a = cfg.algorithm
    cap = a.get("sampler_correction_cap")
    if updates and cap is not None and not recomputes_old_logprobs(a.old_logprobs, cfg.hardware.precision):
        raise ConfigError(f"algorithm.sampler_correction_cap={cap:g} reweighs each token by the update's recomputed "
                          f"log-prob against the sampler's, and with algorithm.old_logprobs={a.old_logprobs} under "
                          f"hardware.precision={cfg.hardware.precision} the update keeps the sampler's (every weight "
                          "would be 1); set algorithm.old_logprobs=recompute, or sampler_correction_cap=null")


def check_sizes(cfg: DictConfig) -> None:
    """Counts, chunk sizes, sampling truncations, the learning rate and the checkpoint format that cannot work."""
    r, t = cfg.rollout, cfg.train
    if cfg.eval.samples_per_item < 1:
        raise ConfigError(f"eval.samples_per_item must be >= 1, got {cfg.eval.samples_per_item}")
    for key, value in {"rollout.top_k": r.top_k, "rollout.micro_batch_size": r.micro_batch_size,
                       "train.score_chunk_size": t.score_chunk_size}.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1 (or null: off), got {value}")
    zscoring = [path for path, node in reward_nodes(cfg) if zscored(node)]  # a mix inside a mix too
    if t.score_chunk_size is not None and zscoring:
        raise ConfigError(f"train.score_chunk_size={t.score_chunk_size} scores each chunk in a call of its own, and "
                          f"this reward z-scores its terms over each call ({zscoring[0]}.normalize=true): chunks "
                          f"would be standardized apart; set train.score_chunk_size=null or "
                          f"{zscoring[0]}.normalize=false")
    together = [(path, node["_target_"]) for path, node in reward_nodes(cfg)
                if target_attribute(node, "scores_together", False)]
    if t.score_chunk_size is not None and together:
        raise ConfigError(f"train.score_chunk_size={t.score_chunk_size} scores each chunk in a call of its own, and "
                          f"{together[0][0]} ({together[0][1].rsplit('.', 1)[-1]}) scores the samples of a call "
                          "together (their statistics, or a model trained on them first): chunks would be scored "
                          "apart; set train.score_chunk_size=null")
    if r.top_p is not None and not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1] (or null: off), got {r.top_p}")
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    if not cfg.optimizer.lr > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {cfg.optimizer.lr}")
    if t.checkpoint_format not in CHECKPOINT_FORMATS:
        raise ConfigError(f"train.checkpoint_format={t.checkpoint_format!r} is not available; choose one of "
                          f"{CHECKPOINT_FORMATS}")
    sizes = {"tokenizer.image_size": cfg.tokenizer.get("image_size"), "data.image_size": cfg.data.get("image_size")}
    if None not in sizes.values() and len(set(sizes.values())) > 1 and has_images(cfg.data):
        raise ConfigError(f"tokenizer.image_size={sizes['tokenizer.image_size']} but data.image_size="
                          f"{sizes['data.image_size']}: the tokenizer's grid, and so the policy's positions, follow "
                          "tokenizer.image_size; set both to the checkpoints' resolution (e.g. 384 for LlamaGen's "
                          "c2i_XL_384.pt)")
    patch = 4  # the embedded VQ's patch: 4x4 pixels a code
    if str(cfg.tokenizer.get("_target_", "")).endswith("build_digits_vq") and cfg.data.image_size % patch:
        raise ConfigError(f"data.image_size={cfg.data.image_size}: tokenizer=digits_vq codes 4x4 patches; set "
                          f"data.image_size to a multiple of {patch} (or use a model-zoo tokenizer)")


def check_text_conditioning(cfg: DictConfig) -> None:
    """The condition mode exists; a text encoder goes with a raster policy that reads it, and its local weights
    exist (they are never downloaded)."""
    mode = cfg.policy.get("condition_mode")
    if mode is not None and mode not in CONDITION_MODES:
        raise ConfigError(f"policy.condition_mode={mode!r} is not available; choose one of {CONDITION_MODES}")
    text = cfg.get("text_encoder")
    if text is None:
        return
    if str(cfg.policy.get("_target_", "")).startswith("rlar.policy.arpg"):
        raise ConfigError("policy=arpg is class-conditional; text_encoder needs policy=gpt or policy=llamagen (or set "
                          "text_encoder=null)")
    if text.max_length < 1:
        raise ConfigError(f"text_encoder.max_length must be >= 1, got {text.max_length}")
    cls_tokens = cfg.policy.get("cls_token_num")
    if cls_tokens is not None and cls_tokens not in (1, text.max_length):
        raise ConfigError(f"policy.cls_token_num={cls_tokens} but text_encoder.max_length={text.max_length}: a "
                          "text-conditioned LlamaGen reads one condition token per caption token; set "
                          f"text_encoder.max_length={cls_tokens} (or policy.cls_token_num=1)")
    if OmegaConf.is_missing(text, "model_path"):
        raise ConfigError("text_encoder.model_path is not set: give a local folder with the encoder's config, weights "
                          "and tokenizer files (e.g. text_encoder.model_path=/models/flan-t5-xl)")
    path = text.get("model_path")
    if path is not None and not (Path(path).expanduser() / "config.json").is_file():
        raise ConfigError(f"text_encoder.model_path='{path}' holds no model (no config.json); give a local folder with "
                          "the encoder's config, weights and tokenizer files (it is never downloaded)")
    if cfg.eval.inception.enabled:
        raise ConfigError("eval.inception samples class-balanced labels, not captions; with a text_encoder set "
                          "eval.inception.enabled=false")


def check_reward_arguments(cfg: DictConfig) -> None:
    """A reward class that does not take the keys of its config node is refused before anything is built: the usual
    case is ``reward._target_=my_rewards.Mine`` over the default reward, a mix whose ``components``, ``weights`` and
    ``normalize`` stay in the node."""
    for path, node in reward_nodes(cfg):
        parameters = init_parameters(get_object(node["_target_"]))
        if parameters is None:
            continue
        extra = [key for key in node if not key.startswith("_") and key not in parameters]
        if extra:
            raise ConfigError(f"{path}._target_={node['_target_']} takes no {', '.join(extra)}: the keys of the reward "
                              f"config whose _target_ it replaces; give the class an option file of its own "
                              f"(my_conf/reward/mine.yaml with hydra.searchpath=[file://my_conf], reward=mine: "
                              "docs/rewards.md, \"Your own reward\")")


def init_parameters(target) -> dict | None:
    """The keyword parameters ``target`` (a class or a function) is called with; None when it takes any (``**``). A
    class with no ``__init__`` of its own below ``Protocol`` (a reward subclassing ``rlar.contracts.Reward``) takes
    none: the protocol's stand-in accepts anything and ``object`` then refuses it."""
    if isinstance(target, type):
        own = next((c for c in target.__mro__ if "__init__" in c.__dict__), object)
        if own is object or getattr(own.__init__, "__name__", "") == "_no_init_or_replace_init":
            return {}
    parameters = inspect.signature(target).parameters
    return None if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()) else dict(parameters)


def check_optimizer(options: DictConfig) -> None:
    """The optimizer checks its options when built: built here over one parameter, so that an option its class does
    not take (AdamW's default betas given to SGD) is refused before anything else is built."""
    try:
        build_optimizer(options, [torch.zeros(1, requires_grad=True)])
    except InstantiationException as e:
        cause = e.__cause__ or e
        hint = ("; an option the class does not take is set to null (optimizer.betas=null for SGD, RMSprop or "
                "Adagrad)" if isinstance(cause, TypeError) else "")
        raise ConfigError(f"optimizer._target_={options._target_}: {cause}{hint}") from e


def check_schedule_steps(schedule, target: str) -> None:
    """The loop steps the lr schedule once per iteration with no argument: a schedule whose ``step`` needs one
    (``ReduceLROnPlateau``'s metric) would fail after the first iteration."""
    needed = [name for name, p in inspect.signature(schedule.step).parameters.items()
              if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if needed:
        raise ConfigError(f"scheduler._target_={target}: its step() needs {', '.join(needed)}, but the loop steps the "
                          "schedule once per iteration with no argument; use a schedule stepped by the iteration "
                          "alone (constant, warmup_linear, cosine, StepLR, LambdaLR, ...)")


def check_step_rewards(cfg: DictConfig) -> None:
    """A reward of the decoding steps (``reward=efficiency``) reads what a learned schedule chooses: any other rollout
    reports no steps (an error at the first reward) or the same steps for every sample (a constant reward)."""
    if cfg.rollout.mode == "schedule":
        return
    for path, node in reward_nodes(cfg):
        if target_attribute(node, "reads_steps", False):
            raise ConfigError(f"{path} scores the decoding steps a learned schedule chooses, and "
                              f"rollout.mode={cfg.rollout.mode} has none to choose; use rollout.mode=schedule "
                              "(experiment=arpg_schedule) or a reward without it")


def check_group_statistics(cfg: DictConfig) -> None:
    """A reward that fits the statistics of the samples it scores together (``loo_fd``: the batch, or with
    ``class_conditional`` each requested class's share of it) leaves a set smaller than it needs unscored (NaN):
    refused when the whole batch is that small, so that no sample could ever be scored."""
    g = cfg.algorithm.get("num_generations")
    if g is None:  # an algorithm that samples nothing
        return
    for path, node in reward_nodes(cfg):
        need = target_attribute(node, "min_group_samples", 0)
        if cfg.train.batch_size * g < need:
            raise ConfigError(f"{path} fits the statistics of the samples it scores together and needs >= {need}, "
                              f"but train.batch_size * algorithm.num_generations = {cfg.train.batch_size * g}; "
                              "raise either")


def target_readers(cfg: DictConfig) -> list[str]:
    """The config paths of the rewards in ``cfg.reward`` that compare each sample with its input image
    (``reads_targets``: l2, perceptual, the VA-pi mix's terms)."""
    return [path for path, node in reward_nodes(cfg) if target_attribute(node, "reads_targets", False)]


def reward_nodes(cfg: DictConfig) -> list[tuple[str, dict]]:
    """``(config path, node)`` of the reward and of every reward inside it (a mix's components): each dict with a
    ``_target_``, its ``data`` left out."""
    found = []

    def visit(node, path: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                found.append((path, node))
            for key, value in node.items():
                if key != "data":
                    visit(value, f"{path}.{key}")

    visit(OmegaConf.to_container(cfg.reward, resolve=True), "reward")
    return found


def check_data_without_images(cfg: DictConfig) -> None:
    """``data=prompts`` has prompts and no images: nothing to train the embedded tokenizer or prior on, no input
    codes for the modes that read them, no reference for the judge, no targets for the rewards that compare with
    them. A classifier reward needs images to train its classifier on, wherever its ``data`` points."""
    for path, node in reward_nodes(cfg):
        if "classifier" in node and "data" in node and not has_images(node["data"] or {}):
            raise ConfigError(f"{path} trains its classifier on {path}.data, which has no images (data=prompts); "
                              f"point it at images of the same classes, e.g. {path}.data={{_target_:"
                              "rlar.data.digits.DigitsData}")
    if has_images(cfg.data):
        return
    nothing = "data=prompts has no images"
    if cfg.rollout.mode in ("prefix", "teacher_forced"):
        raise ConfigError(f"{nothing}: rollout.mode={cfg.rollout.mode} reads the input images' codes; use "
                          "rollout.mode=autoregressive (or parallel, schedule)")
    for key, value in {"train.warmup_steps": cfg.train.warmup_steps,
                       "algorithm.ntp_weight": cfg.algorithm.get("ntp_weight")}.items():
        if value:
            raise ConfigError(f"{nothing}: {key}={value} trains on the images' codes; set {key}=0")
    if cfg.eval.classifier:
        raise ConfigError(f"{nothing} for the judge (eval/fd, eval/class_acc) to train on and compare with; set "
                          "eval.classifier=false")
    if cfg.eval.inception.enabled and not cfg.eval.inception.reference:
        raise ConfigError(f"{nothing} to compare eval/inception_* with; set eval.inception.reference (an .npz or a "
                          "folder of images)")
    for key in ("tokenizer.checkpoint", "policy.checkpoint"):
        group, name = key.split(".")
        if name in cfg[group] and not cfg[group][name]:
            raise ConfigError(f"{nothing} to train the embedded {group} on; give {key}=<a saved checkpoint>")
    encoder = cfg.get("text_encoder")
    checkpoint = cfg.policy.get("checkpoint")
    if encoder is not None and target_attribute(encoder, "trainable", False) and not carries_text_encoder(checkpoint):
        raise ConfigError(f"{nothing}: text_encoder=embedded is trained with the prior on the captions of images, and "
                          f"policy.checkpoint={checkpoint} does not carry it (its weights are in that prior's cache "
                          "entry); give policy.checkpoint=<a folder rlar-export wrote, with text_encoder.safetensors>, "
                          "or use a frozen encoder (text_encoder=t5 or clip)")
    readers = target_readers(cfg)
    if readers:
        raise ConfigError(f"{nothing}: {', '.join(readers)} compares each sample with its input image; use a reward "
                          "that needs no target (compositional, clip, class_consistency, ...)")


def check_data_pairs(cfg: DictConfig) -> None:
    """An algorithm that trains on data pairs (``algorithm=cca``) scores the data's codes in raster order and samples
    nothing: the rollout's sampling options would be silently unused."""
    if not has_images(cfg.data):
        raise ConfigError("algorithm=cca trains on the data's images (their codes under their own and mismatched "
                          "labels), and data=prompts has none; give data with images (data=digits, hf_disk, "
                          "image_folder)")
    if cfg.get("text_encoder") is not None:
        raise ConfigError("algorithm=cca contrasts each image's class label with another class, not captions; set "
                          "text_encoder=null (or use an RL algorithm: grpo, reinforce, ppo)")
    r = cfg.rollout
    if r.mode != "autoregressive":
        raise ConfigError(f"algorithm=cca trains on the data's codes (teacher forcing in raster order) and samples no "
                          f"rollouts, so rollout.mode={r.mode!r} would do nothing; set rollout.mode=autoregressive "
                          "(evaluation samples free-running) and a raster policy (gpt, llamagen)")
    unused = {"rollout.token_noise_prob": r.token_noise_prob, "rollout.label_dropout": r.label_dropout}
    for key, value in unused.items():
        if value:
            raise ConfigError(f"{key}={value} shapes rollouts, and algorithm=cca samples none (it scores the data's "
                              f"codes under their own and mismatched labels); set {key}=0")


def check_channels(cfg: DictConfig) -> None:
    """The data's channels are the tokenizer's (the public tokenizers read RGB)."""
    data, tokenizer = data_channels(cfg), tokenizer_channels(cfg)
    if tokenizer is not None and data != tokenizer:
        if "channels" not in cfg.data:  # the embedded digits: grayscale, with nothing to set
            raise ConfigError(f"the embedded digits are 1-channel images and the tokenizer reads {tokenizer}-channel "
                              "ones; give data=image_folder or data=hf_disk (their data.channels defaults to 3)")
        raise ConfigError(f"data.channels={data} but the tokenizer reads {tokenizer}-channel images; set "
                          f"data.channels={tokenizer} (grayscale files are converted on decoding)")


def check_inception_eval(cfg: DictConfig) -> None:
    """``eval.inception.enabled`` needs the Inception weights on disk (never downloaded) and at least 2 samples."""
    inception = cfg.eval.inception
    if not inception.enabled:
        return
    weights = Path(inception.weights or default_weights_path(cfg.cache_dir)).expanduser()
    if not weights.is_file():
        raise ConfigError(f"eval.inception.enabled=true: {missing_weights_message(weights)}")
    if inception.reference and not Path(inception.reference).expanduser().exists():
        raise ConfigError(f"eval.inception.reference='{inception.reference}' does not exist; give an .npz (arr_0: "
                          "uint8 [N, H, W, 3]) or a folder of images, or null for the held-out split")
    if inception.reference and Path(inception.reference).expanduser().is_file():  # an .npz: its headers, not arrays
        try:
            count = check_npz_reference(inception.reference, POOL_WIDTH)
            check_reference_size(count, f"eval.inception.reference={inception.reference}")
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if inception.num_samples < 2:
        raise ConfigError(f"eval.inception.num_samples must be >= 2 (FID fits a covariance), got "
                          f"{inception.num_samples}")


def check_optimized_metric(cfg: DictConfig) -> None:
    """``optimized_metric`` (what ``rlar.run`` returns to a sweeper) is a metric the run's evaluations measure."""
    group, _, name = cfg.optimized_metric.partition("/")
    measures = {"eval": True, "eval_cfg": cfg.eval.guided_cfg_scale is not None}
    captioned = any(cfg.data.get(key) for key in ("captions", "caption_column")) or not has_images(cfg.data)
    needs = {**dict.fromkeys(JUDGE_METRICS, cfg.eval.classifier),
             **dict.fromkeys(("inception_fid", "inception_is"), cfg.eval.inception.enabled),
             "steps": cfg.rollout.mode in ("parallel", "schedule"), **dict.fromkeys(ATTRIBUTE_METRICS, captioned),
             **dict.fromkeys(("attr/class_acc", "attr/all_acc"), captioned and cfg.eval.classifier)}
    if not measures.get(group) or name not in HEADLINE_METRICS or not needs.get(name, True):
        raise ConfigError(f"optimized_metric={cfg.optimized_metric!r} is not measured by this run; choose eval/<m> "
                          f"with m one of {HEADLINE_METRICS} (the judge's need eval.classifier=true, inception_* "
                          "eval.inception.enabled=true, steps a parallel decoder, attr/* captioned data, eval_cfg/<m> "
                          "eval.guided_cfg_scale)")


def check_parallel_decoding(cfg: DictConfig) -> None:
    """``policy=arpg`` goes with ``rollout.mode=parallel`` (fine-tune ARPG) or ``schedule`` (learn its decoding
    schedule), with a schedule the parallel sampler knows."""
    r = cfg.rollout
    arpg = is_arpg(cfg)
    if arpg and r.mode not in ("parallel", "schedule"):
        raise ConfigError(f"policy=arpg decodes several positions per step in a random order, not in rollout.mode="
                          f"{r.mode!r}; set rollout.mode=parallel (or schedule, to learn its decoding schedule)")
    if r.mode in ("parallel", "schedule") and not arpg:
        raise ConfigError(f"rollout.mode={r.mode} needs a parallel decoder; set policy=arpg (or another rollout.mode)")
    if not arpg:
        return
    if r.mode == "schedule":
        check_learned_schedule(cfg)
    if r.mode == "parallel" and cfg.algorithm.get("value_head"):
        raise ConfigError("algorithm.value_head=true runs GAE over raster positions, and policy=arpg decodes them in "
                          "a random order, several per step, so its returns would follow pixel position, not "
                          "decoding time; set algorithm.value_head=false (PPO's batch-normalized advantages)")
    if r.num_iter < 1:
        raise ConfigError(f"rollout.num_iter must be >= 1, got {r.num_iter}")
    if r.schedule not in SCHEDULES:
        raise ConfigError(f"rollout.schedule={r.schedule!r} is not available; choose one of {list(SCHEDULES)}")
    if r.cfg_schedule not in CFG_SCHEDULES:
        raise ConfigError(f"rollout.cfg_schedule={r.cfg_schedule!r} is not available; choose one of {CFG_SCHEDULES}")
    if r.cfg_interval is not None:
        raise ConfigError("rollout.cfg_interval guides raster positions; with rollout.mode=parallel use "
                          "rollout.cfg_schedule (constant | linear) and set rollout.cfg_interval=null")
    if cfg.algorithm.get("ntp_weight") and r.cfg_scale != 1:
        raise ConfigError("algorithm.ntp_weight > 0 with policy=arpg scores the ground truth in a fresh random order "
                          "per row, which guidance cannot pair with its null-class rows; set rollout.cfg_scale=1 or "
                          "algorithm.ntp_weight=0")


def is_arpg(cfg: DictConfig) -> bool:
    """Whether ``policy`` is the parallel decoder ARPG."""
    return str(cfg.policy.get("_target_", "")).startswith("rlar.policy.arpg")


def check_unread_rollout_options(cfg: DictConfig) -> None:
    """A rollout option set off its default where nothing reads it is refused: the parallel sampler's settings with
    a raster policy, the fixed schedule's where a learned one decodes, token noise where no ground-truth context is
    read (no prefix, no teacher forcing, no next-token term). (``micro_batch_size``, a memory bound that changes no
    result, may be set where no sampler decodes rows: a study's command line gives it to every setting.)"""
    r, defaults = cfg.rollout, RolloutSchema()
    unread = {}
    if not is_arpg(cfg):
        unread |= dict.fromkeys(("num_iter", "schedule", "cfg_schedule"), "by a raster policy (gpt, llamagen: "
                                "one position per step); they set policy=arpg's parallel decoding")
    elif r.mode == "schedule":
        unread |= dict.fromkeys(("num_iter", "schedule"), "in rollout.mode=schedule, where the learned schedule "
                                "chooses the steps (schedule.max_steps caps them)")
    if r.mode not in ("prefix", "teacher_forced") and not cfg.algorithm.get("ntp_weight"):
        unread["token_noise_prob"] = (f"in rollout.mode={r.mode} without a next-token term, where no ground-truth "
                                      "context is read (it noises the prefix, the teacher-forced context and the "
                                      "next-token term's)")
    for key, where in unread.items():
        default = getattr(defaults, key)
        if r[key] != default:
            raise ConfigError(f"rollout.{key}={r[key]} is read nowhere {where}; set rollout.{key}={default} (its "
                              "default)")


def check_unread_schedule_options(cfg: DictConfig) -> None:
    """A ``schedule.*`` option set off its default is read by ``rollout.mode=schedule`` alone: refused elsewhere."""
    if cfg.rollout.mode == "schedule":
        return
    defaults = ScheduleSchema()
    for key, value in cfg.schedule.items():
        if value != getattr(defaults, key):
            raise ConfigError(f"schedule.{key}={value} is read by the learned decoding schedule alone "
                              f"(rollout.mode=schedule, experiment=arpg_schedule), and rollout.mode={cfg.rollout.mode};"
                              f" set schedule.{key}={getattr(defaults, key)} (its default)")


def check_learned_schedule(cfg: DictConfig) -> None:
    """``rollout.mode=schedule`` trains only the schedule network of a frozen generator, on one process."""
    sch, a = cfg.schedule, cfg.algorithm
    for key in ("max_steps", "max_degree", "hidden"):
        if sch[key] < 1:
            raise ConfigError(f"schedule.{key} must be >= 1, got {sch[key]}")
    if cfg.rollout.cfg_schedule != "constant":
        raise ConfigError("rollout.mode=schedule reads the generator's distributions before the degree is drawn, so "
                          "the guidance cannot depend on it; set rollout.cfg_schedule=constant")
    frozen = {"algorithm.beta": a.get("beta"), "algorithm.ntp_weight": a.get("ntp_weight"),
              "algorithm.value_head": a.get("value_head"), "train.warmup_steps": cfg.train.warmup_steps}
    for key, value in frozen.items():
        if value:
            raise ConfigError(f"{key}={value}: rollout.mode=schedule keeps the generator frozen and its actions are "
                              f"schedules, not tokens; set {key} to 0/false (or use rollout.mode=parallel)")
    if a.get("sampler_correction_cap") is not None:
        raise ConfigError(f"algorithm.sampler_correction_cap={a.sampler_correction_cap:g} reweighs the generator's "
                          "tokens, and rollout.mode=schedule scores schedules with its own small network; set "
                          "algorithm.sampler_correction_cap=null")
    if a.get("top_entropy_quantile", 1.0) < 1:
        raise ConfigError(f"algorithm.top_entropy_quantile={a.top_entropy_quantile:g} keeps the generator's "
                          "highest-entropy tokens, and rollout.mode=schedule has one action per sample (its "
                          "schedule); set algorithm.top_entropy_quantile=1")
    if a.get("old_logprobs") == "recompute":
        raise ConfigError("algorithm.old_logprobs=recompute re-scores the generator's tokens, and "
                          "rollout.mode=schedule scores schedules with its own small network (no KV cache to differ "
                          "from); set algorithm.old_logprobs=auto")
    if cfg.hardware.strategy != "none":
        raise ConfigError(f"rollout.mode=schedule runs on one process; got hardware.strategy="
                          f"{cfg.hardware.strategy!r}, use hardware=cpu or hardware=cuda")
