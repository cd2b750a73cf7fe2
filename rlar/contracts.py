"""The typed contracts between the parts of the loop: what a policy, a parallel decoder, a tokenizer, a reward,
an algorithm (on samples or on data pairs) and a logger provide. Structural (``typing.Protocol``): a class satisfies
one by having its members; the classes of ``rlar`` are checked against them in ``tests/test_contracts.py``.

Shapes: ``N`` rows (samples), ``T`` image tokens, ``V`` codebook size, ``D`` hidden width, ``S`` decoding steps.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Policy(Protocol):
    """A policy over the ``T = block_size`` image tokens of a ``V = vocab_size`` codebook, width ``D = n_embd``.

    ``decodes_in_parallel`` says how free-running samples are drawn: False, by the KV-cached raster sampler
    (``RasterPolicy``); True, by the policy's own ``decode`` (``ParallelDecoder``).
    """

    vocab_size: int
    block_size: int
    n_embd: int
    decodes_in_parallel: bool

    def train(self, mode: bool = True) -> Policy: ...

    def eval(self) -> Policy: ...


@runtime_checkable
class TokenPolicy(Policy, Protocol):
    """A policy whose actions are tokens: teacher forcing ``(tokens [N, T], condition [N] or None) -> logits [N, T,
    V]`` (``logits[:, t]`` scores ``tokens[:, t]``), with ``hidden=True`` also the final hidden states ``[N, T, D]``
    (``rlar.rollout.sampling.policy_logprobs``). A condition: a ``rlar.policy.conditioning.Condition`` (class labels
    or caption features) or class ids ``[N]``, negative or None for the null class."""

    def __call__(self, tokens: torch.Tensor, condition: Any = None, hidden: bool = False) -> Any: ...


@runtime_checkable
class RasterPolicy(TokenPolicy, Protocol):
    """A token policy the KV-cached raster sampler (``rlar.rollout.sampling``) decodes, one token per step;
    ``sequence_len``: the positions its cache holds (the condition's and ``T - 1`` image tokens)."""

    sequence_len: int

    def new_cache(self, batch: int, device, dtype=None) -> Any:
        """An empty key/value cache for ``batch`` rows."""

    def prefill(self, condition: Any, prefix: torch.Tensor, cache: Any) -> torch.Tensor:
        """Read the condition (a Condition or labels) and ``prefix [N, k]`` into ``cache``: the logits of the next
        token ``[N, V]``."""

    def step(self, token: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append ``token [N]`` to ``cache``: the logits of the next token ``[N, V]``."""


@runtime_checkable
class StaticStepPolicy(RasterPolicy, Protocol):
    """A raster policy with a static-shape decode step (``hardware.compile_decode``; ``rlar.rollout.static_decode``):
    the cache is preallocated and written in place at ``position``, so every step has the same shapes."""

    def static_step(self, token: torch.Tensor, cache: Any) -> torch.Tensor:
        """``step`` on a ``rlar.policy.static_cache.StaticKVCache``: the logits of the next token ``[N, V]``."""


@runtime_checkable
class DecodedSample(Protocol):
    """Free-running samples of a parallel decoder."""

    tokens: torch.Tensor  # [N, T] long, raster
    logprobs: torch.Tensor  # [N, T] fp32, raster: the log-prob of each token when it was drawn

    @property
    def steps(self) -> torch.Tensor:
        """Decoding steps of each sample ``[N]`` (long)."""


@runtime_checkable
class ParallelDecoder(Policy, Protocol):
    """A policy that decodes whole images itself, several positions per step (ARPG under a fixed schedule, or a
    learned schedule, ``rlar.schedule``); ``decoding``: its settings for free-running evaluation."""

    decoding: dict

    def decode(self, labels: torch.Tensor | None, num_samples: int, **sampling) -> DecodedSample:
        """``num_samples`` images for ``labels [N]`` under ``sampling`` (temperature, top_k, top_p, cfg_scale,
        generator; ``rlar.rollout.parallel_decoding.parallel_generations``)."""


@runtime_checkable
class ParallelPolicy(TokenPolicy, ParallelDecoder, Protocol):
    """An ARPG: teacher forcing under a decoding order (``orders [N, T]``, ``step_sizes [S]``), and the incremental
    parallel step the sampler (``rlar.rollout.parallel_decoding.sample_parallel``) and a learned schedule
    (``rlar.schedule.state``) call."""

    freqs_cis: torch.Tensor  # the RoPE table: the model's device

    def class_ids(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Embedding ids ``[N]`` of the class slot."""

    def new_cache(self, batch: int, device, dtype=None) -> Any:
        """An empty key/value cache for ``batch`` rows: the class slot and ``T`` tokens."""

    def decode_step(self, ids: torch.Tensor, rows: torch.Tensor, query_rows: torch.Tensor, cache: Any
                    ) -> torch.Tensor:
        """Feed ids ``[N, L]`` at RoPE rows ``rows [N, L]``, query ``query_rows [N, n]``: logits ``[N, n, V]``."""

    def query(self, ids: torch.Tensor, rows: torch.Tensor, query_rows: torch.Tensor, self_mask: torch.Tensor,
              cross_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoding state read from scratch: ``(logits [N, Lq, V], hidden states [N, Lq, D])``."""


@runtime_checkable
class Tokenizer(Protocol):
    """A frozen VQ tokenizer (``rlar.tokenizer.frozen.FrozenTokenizer``): images ``[N, C, H, W]`` in [-1, 1] <-> codes
    ``[N, h*w]`` (row-major over ``grid = (h, w)``) of a ``codebook_size`` codebook. ``source``: where its weights
    came from; ``metrics``: its measured reconstruction quality (``psnr_db``, ...), if any."""

    codebook_size: int
    grid: tuple[int, int]
    source: str | None
    metrics: dict[str, float]

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Reward(Protocol):
    """Scores images ``[N, C, H, W]`` in [-1, 1]: ``(rewards [N] fp32, NaN where unscored; {component: [N]})``.
    ``targets [N, C, H, W]``: the input images the samples condition on; ``meta``: ``labels [N]``, and ``steps
    [N]`` for parallel decoders. ``metrics()``: what the reward reports of itself since the last read (a remote
    reward: latency, retries, ...). ``may_be_absent``: NaN means "does not apply" rather than "failed"
    (``rlar.reward.mixture``). ``reads_targets``: it compares samples with their targets, so it cannot score
    data without images (``rlar.config.validate`` refuses it there). ``reads_steps``: it scores ``meta["steps"]``,
    which only a learned schedule varies (refused with any other rollout). ``scores_together``: it scores the
    samples of one call together (their statistics, or a model trained on them first), so a call must hold the
    whole batch (``train.score_chunk_size`` is refused with it). A reward that learns across calls
    (``reward=discriminator``, ``loo_fd``'s moving averages) learns only while ``learning`` is True (evaluation scores
    with it False) and keeps what it learned in ``state_dict()``, which checkpoints save. The rewards of
    ``rlar.reward`` subclass this protocol: by default they report no metrics, are never absent, read no targets
    or steps, score each sample alone and keep no state. ``close()`` releases what the reward holds (a remote
    reward's threads and HTTP client); the loop calls it when the run ends."""

    may_be_absent: bool = False
    reads_targets: bool = False
    reads_steps: bool = False
    scores_together: bool = False
    learning: bool = True

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None, meta: dict | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


@runtime_checkable
class Algorithm(Protocol):
    """An RL algorithm (``rlar.algorithm.algorithms``): ``num_generations`` samples per item; ``beta``: the KL
    coefficient to the frozen prior; ``value_head``: learns a critic (then it also has ``vf_coef``, ``gamma`` and
    ``gae_lambda``, and may have ``value_clip``: PPO); ``aggregation``, where present, says whether its loss is a
    mean over scored rows (``token``, ``sequence``) or over all rows (else); ``target_kl``, where present, ends the
    update at a step (not taken) whose minibatches' loss stats report a larger ``policy/approx_kl``;
    ``kl_penalty``, where present: ``reward`` takes the KL from the rewards instead of the loss; ``stats_key``: what a
    condition is for per-condition statistics (``class`` | ``image``). ``top_entropy_quantile`` and
    ``sampler_correction_cap``, where present, weigh each token's loss through its advantage (``loss`` then receives
    ``[n, T]``), and ``value_detach`` keeps the value loss out of the trunk.
    The rest are the settings of the update skeleton every algorithm shares (``rlar.algorithm.update``;
    ``old_logprobs``: the ratio's old log-probs, ``auto`` | ``sampler`` | ``recompute``).
    ``trains_on_data`` is False: it learns from sampled rollouts (``DataPairAlgorithm`` learns from data pairs).
    ``steps_once``: one optimizer step per rollout on the mean gradient of all its minibatches, whatever
    ``grad_accum`` (an on-policy loss without a ratio: REINFORCE)."""

    trains_on_data: bool
    steps_once: bool
    num_generations: int
    beta: float
    value_head: bool
    stats_key: str
    epochs: int
    minibatch_size: int
    grad_accum: int
    entropy_coef: float
    kl_estimator: str
    ntp_weight: float
    old_logprobs: str

    def advantages(self, rewards: torch.Tensor, keys: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``rewards [N]`` (the global batch), ``keys [N]`` (the condition of each row) -> ``(advantages [N], keep
        [N] bool, stats)``; ``keep`` is False for the rows the update leaves out."""

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy loss of log-probs ``[n, T]`` against those at sampling time, advantages ``[n]`` or ``[n, T]``,
        over the ``mask [n, T]`` of actions; and its stats."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class DataPairAlgorithm(Protocol):
    """An algorithm that trains on data pairs, not on samples (``trains_on_data`` True; CCA,
    ``rlar.algorithm.cca``): each data image's codes under its own label and under a mismatched one, against the
    frozen prior (built because ``beta > 0``); ``rlar.algorithm.pair_update`` runs its update,
    ``minibatch_size`` images per forward pass."""

    trains_on_data: bool
    beta: float
    value_head: bool
    minibatch_size: int

    def negatives(self, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """A mismatched label ``[N]`` for each of ``labels [N]``: never the label itself."""

    def loss(self, logp_pos: torch.Tensor, ref_pos: torch.Tensor, logp_neg: torch.Tensor, ref_neg: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of sequence log-probs ``[n]`` (the policy's and the prior's, under the own and the mismatched
        labels), and its stats."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Logger(Protocol):
    """Where a run's metrics go (``rlar.runtime``: TensorBoard, W&B, several at once). ``open`` is called on rank 0
    only; a logger never opened writes nothing. ``scalars`` logs every ``log_every`` steps (its own rule);
    ``groups`` logs an image grid of inputs and their samples (``[B, C, H, W]``, ``[B*G, C, H, W]`` in [-1, 1]),
    which the loop makes when :func:`rlar.runtime.logger.images_due` says so for ``image_every``."""

    image_every: int

    def open(self, output_dir: Any) -> None: ...

    def scalars(self, metrics: dict[str, float], step: int) -> None: ...

    def groups(self, tag: str, targets: torch.Tensor, samples: torch.Tensor, step: int, max_rows: int = 4) -> None: ...

    def close(self) -> None: ...
