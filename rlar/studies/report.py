"""A study's report: ``REPORT.md`` (mean ± std over seeds) and ``curves.png``, from the runs' own records.

Each run's numbers come from its ``summary.json`` and its curves from its TensorBoard event files (read with
TensorBoard's ``EventAccumulator``); runs are grouped into the study's settings by their Hydra overrides.
``python -m rlar.studies.ablation <study> --report-only`` rewrites a report without running anything.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import shlex
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from rlar.config.dir_name import excluded  # noqa: E402
from rlar.config.store import compose_config  # noqa: E402
from rlar.eval.evaluate import ATTRIBUTE_METRICS, JUDGE_METRICS, summary_key  # noqa: E402
from rlar.eval.rejudge import sample_std  # noqa: E402
from rlar.eval.run_models import saved_since_summary  # noqa: E402
from rlar.reward.mixture import zscored  # noqa: E402
from rlar.runtime.atomic_files import atomic_write_text  # noqa: E402
from rlar.studies.judged import Judgement, study_judgements  # noqa: E402
from rlar.studies.study import Study, sweep_dir  # noqa: E402

TIME_TAGS = ("time/rollout", "time/decode", "time/reward", "time/update")
CURVE_TAGS = ("eval/reward", "eval/fd", "eval/class_acc", "eval/recall", "reward/mean", *TIME_TAGS)


@dataclass
class Run:
    path: Path
    seed: int
    before: float                      # eval reward of the prior
    after: float                       # eval reward after RL
    iterations: int
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # tag -> {step: value}
    summary: dict = field(default_factory=dict)  # the run's summary.json
    reward: str = ""  # the run's reward config (YAML): eval rewards compare only between equal ones

    @functools.cached_property
    def reward_state(self) -> dict:
        """The checkpoint's ``reward`` state (``{}`` without one); a mix's holds its terms that keep state by name."""
        last = self.path / "checkpoints" / "last.pt"
        if not last.is_file():
            return {}
        return torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("reward") or {}

    @property
    def reward_learns(self) -> bool:
        """Whether the reward kept state across calls (an entry of its state is not empty: the discriminator, loo_fd's
        averages; a mix of stateless rewards once saved ``{name: {}}`` per component): then each evaluation reads it
        as it was then, and the prior's eval reward and the final one are not on one scale."""
        return any(bool(value) for value in self.reward_state.values())

    @functools.cached_property
    def reward_normalized(self) -> bool:
        """Whether the run's reward is a mix z-scored over each batch (``rlar.reward.mixture.zscored``). A reward class
        that cannot be imported here (a user's module) is read by its ``normalize`` alone."""
        config = yaml.safe_load(self.reward) if self.reward else None
        try:
            return zscored(config)
        except ImportError:
            return bool(config.get("normalize"))

    def term_learns(self, term: str, terms: set[str]) -> bool:
        """Whether the reward term ``term`` (of the run's ``terms``, the names of its ``eval/reward/<name>`` tags) kept
        state: a mix's state holds its stateful terms by name; any other reward's state is its own, read by every
        term it reports (a lone ``reward=discriminator``'s ``disc_logit``)."""
        if set(self.reward_state) <= terms:
            return bool(self.reward_state.get(term))
        return self.reward_learns

    @property
    def seconds_per_iteration(self) -> float | None:
        steps = [sum(self.curves[tag].get(s, 0.0) for tag in TIME_TAGS) for s in self.curves.get("time/rollout", {})]
        return statistics.mean(steps) if steps else None


def read_scalars(run_dir: Path, tags: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file of the run; a step logged twice (a resume) keeps the last."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 1})
    events.Reload()
    have = set(events.Tags()["scalars"])
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags if tag in have}


def defining(overrides, exclude_keys: set[str]) -> frozenset[str]:
    """The overrides that define what a run computes: without the seed, the keys its dir name leaves out (the
    ``exclude_keys`` patterns) and Hydra's own (``hydra.*``, ``hydra/*``: a run's record of its task never holds
    them), each as Hydra parses it (``lr=3.0e-5`` as a multirun records it, ``lr=3e-05``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return frozenset(f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed
                     if not excluded(o.key_or_group, [*exclude_keys, "hardware.seed"])
                     and not o.key_or_group.startswith(("hydra.", "hydra/")))


def collect_runs(study: Study, outputs: str | Path, extra: list[str] = ()) -> dict[str, list[Run]]:
    """The finished runs of each setting (in the study's order), sorted by seed: a run belongs to a setting when
    its overrides are exactly the study's, the setting's and ``extra`` (the command line's, given to every run), up
    to the seed and what its dir name leaves out, and it ran as many iterations as they set (and has saved nothing
    since: a run extended to more and stopped before its new end is not finished)."""
    runs: dict[str, list[Run]] = {label: [] for label in study.settings}
    asked = {k: [*study.run_overrides(k), *extra] for k in study.settings}
    iterations = {k: compose_config(overrides).train.iterations for k, overrides in asked.items()}
    for summary_path in sorted(sweep_dir(outputs).glob("*/summary.json")):
        run_dir = summary_path.parent
        hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
        exclude_keys = set(hydra_cfg.job.config.override_dirname.exclude_keys)
        have = defining(hydra_cfg.overrides.task, exclude_keys)
        label = next((k for k, overrides in asked.items() if defining(overrides, exclude_keys) == have), None)
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        summary = json.loads(summary_path.read_text())
        if label is None or cfg.hardware.seed not in study.seeds or summary["iterations"] != iterations[label]:
            continue  # another study's run, or this one at another length
        if saved_since_summary(run_dir):  # extended and stopped: its weights are no longer those of its summary
            continue
        runs[label].append(Run(run_dir, cfg.hardware.seed, summary["eval_reward_before"],
                               summary["eval_reward_after"], summary["iterations"],
                               read_scalars(run_dir, CURVE_TAGS), summary, OmegaConf.to_yaml(cfg.reward)))
    for label in runs:
        runs[label].sort(key=lambda r: r.seed)
    return runs


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """``(mean, sample std)``; the std of a single value is 0."""
    return statistics.mean(values), sample_std(values) if len(values) > 1 else 0.0


def mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± sample std`` (the std needs two values)."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{statistics.mean(values):.{digits}f} ± {sample_std(values):.{digits}f}"


def table(study: Study, runs: dict[str, list[Run]]) -> str:
    """The markdown table: one row per setting."""
    lines = ["| setting | overrides | seeds | prior eval reward | final eval reward | per seed | change | s / it |",
             "|---|---|---|---|---|---|---|---|"]
    for label, group in runs.items():
        overrides = " ".join(f"`{o}`" for o in study.settings[label]) or "none"
        if not group:
            lines.append(f"| {label} | {overrides} | 0 | – | – | – | – | – |")
            continue
        speeds = [s for r in group if (s := r.seconds_per_iteration) is not None]
        speed = f"{statistics.mean(speeds):.2f}" if speeds else "–"
        seeds = ", ".join(str(r.seed) for r in group)
        if all(r.reward_normalized for r in group):
            lines.append(f"| {label} | {overrides} | {seeds} | 0 (z-scored) | 0 (z-scored) | – "
                         f"| n/a: z-scored over each batch; its terms below | {speed} |")
            continue
        per_seed = " / ".join(f"{r.after:.4f}" for r in group)
        change = ("n/a: the reward learns" if any(r.reward_learns for r in group)
                  else relative_change([r.before for r in group], [r.after for r in group]))
        lines.append(f"| {label} | {overrides} | {seeds} "
                     f"| {mean_std(sorted({r.before for r in group}))} | {mean_std([r.after for r in group])} "
                     f"| {per_seed} | {change} | {speed} |")
    return "\n".join(lines)


def metric_columns(metrics: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``(summary key, tag)`` of each of ``metrics``, unguided (``eval/``) then guided (``eval_cfg/``)."""
    return tuple((summary_key(m, group), f"{group}/{m}") for group in ("eval", "eval_cfg") for m in metrics)


EVAL_MODEL_COLUMNS = metric_columns(JUDGE_METRICS)
ATTRIBUTE_COLUMNS = metric_columns(ATTRIBUTE_METRICS)  # the prompts' checks (docs/text_conditioning.md)


def relative_change(before: list[float], after: list[float]) -> str:
    """The change of the means relative to the prior's, as ``+12.3 %``; ``n/a`` where the prior's mean is 0."""
    prior = statistics.mean(before)
    return f"{100 * (statistics.mean(after) - prior) / abs(prior):+.1f} %" if prior else "n/a"


def measured_columns(runs: dict[str, list[Run]], metrics: tuple) -> list[tuple[str, str]]:
    """The ``(summary key, tag)`` pairs of ``metrics`` that every run measured."""
    every = [r for group in runs.values() for r in group]
    return [(key, tag) for key, tag in metrics if all(r.summary.get(f"{key}_before") is not None for r in every)]


def eval_model_table(runs: dict[str, list[Run]], metrics: tuple = EVAL_MODEL_COLUMNS) -> str:
    """The evaluation's ``metrics`` (``(summary key, tag)`` pairs) before and after RL (mean ± std over seeds, and
    the relative change of the means), for the ones every run measured; empty when none did."""
    measured = measured_columns(runs, metrics)
    if not measured:
        return ""
    lines = ["| setting | " + " | ".join(f"{tag} prior | {tag} final | change" for _, tag in measured) + " |",
             "|---|" + "---|---|---|" * len(measured)]
    for label, group in runs.items():
        if not group:
            continue
        cells = []
        for key, _ in measured:
            before = [r.summary[f"{key}_before"] for r in group]
            after = [r.summary[f"{key}_after"] for r in group]
            change = relative_change(before, after)
            cells.append(f"{mean_std(sorted(set(before)), 3)} | {mean_std(after, 3)} | {change}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reward_terms_table(runs: dict[str, list[Run]]) -> str:
    """Each term of a mixed reward on its own (``eval/reward/<name>``, from the first and last evaluation of each
    run's history) before and after RL, mean ± std over seeds: a mix z-scored over the batch has a mean of 0 however
    its terms move. A term that keeps state (the checkpoint's) has no change: its prior and final values come from
    different versions of it. Empty when no run's reward has terms."""
    rows = []
    for label, group in runs.items():
        if not group or not all(r.summary.get("history") for r in group):
            continue
        histories = [r.summary["history"] for r in group]
        terms = [tag for tag in histories[0][0] if tag.startswith("eval/reward/")
                 and all(tag in h[0] and tag in h[-1] for h in histories)]
        names = {tag.removeprefix("eval/reward/") for tag in terms}
        for tag in terms:
            before, after = [h[0][tag] for h in histories], [h[-1][tag] for h in histories]
            learns = any(r.term_learns(tag.removeprefix("eval/reward/"), names) for r in group)
            change = "n/a: the term learns" if learns else relative_change(before, after)
            rows.append(f"| {label} | {tag} | {mean_std(sorted(set(before)))} | {mean_std(after)} | {change} |")
    header = ["| setting | reward term | prior | final | change |", "|---|---|---|---|---|"]
    return "\n".join([*header, *rows]) if rows else ""


def reward_terms_notes(runs: dict[str, list[Run]]) -> str:
    """The bullet that explains ``reward_terms_table``, when there is one."""
    if not reward_terms_table(runs):
        return ""
    return ("\n- **reward terms**: each term of the reward's mix on its own, the mean over the same samples before "
            "z-scoring and weighting (`eval/reward/<term>`); a term that learns (the discriminator, loo_fd's moving "
            "averages) is read as it is at each evaluation, so only a fixed one (a classifier's probability, a pixel "
            "loss) has a *change*.")


def zscored_note(runs: dict[str, list[Run]]) -> str:
    """The sentence that explains the eval reward table's ``0 (z-scored)`` rows, when it has one."""
    if not any(r.reward_normalized for group in runs.values() for r in group):
        return ""
    return (" A mix that z-scores its terms over each batch (`normalize`) has a mean of 0 by construction: its "
            "terms say what moved.")


def judged_table(priors: dict[str, Judgement], settings: dict[str, list[Judgement]],
                 soups: dict[str, Judgement] | None = None) -> str:
    """One row per prior (mean ± std over the eval seeds), per setting (the mean over its runs of each run's mean
    over the eval seeds, ± their std over the runs), with each run's mean eval/fd, and per soup of a setting's runs
    (mean ± std over the eval seeds)."""
    lines = ["| | " + " | ".join(f"eval/{m}" for m in JUDGE_METRICS) + " | eval/fd per run |",
             "|---|" + "---|" * (len(JUDGE_METRICS) + 1)]
    digits = {"fd": 2}
    for label, judged in priors.items():
        cells = [mean_std(judged[f"eval/{m}"]["values"], digits.get(m, 3)) for m in JUDGE_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " | – |")
    for label, runs in settings.items():
        if runs:
            cells = [mean_std([r[f"eval/{m}"]["mean"] for r in runs], digits.get(m, 3)) for m in JUDGE_METRICS]
            per_run = " / ".join(f"{r['eval/fd']['mean']:.2f}" for r in runs)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {per_run} |")
    for label, judged in (soups or {}).items():
        cells = [mean_std(judged[f"eval/{m}"]["values"], digits.get(m, 3)) for m in JUDGE_METRICS]
        lines.append(f"| {label}: soup of its {len(settings[label])} runs | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def study_judged(study: Study, runs: dict[str, list[Run]], outputs: str | Path, extra: list[str] = ()
                 ) -> tuple[dict[str, Judgement], dict[str, list[Judgement]], dict[str, Judgement]] | None:
    """The study's ``judge: N`` judgements ``(priors, settings, soups)`` of its runs (None without it); judges what is
    not judged yet (``rlar.studies.judged.study_judgements``)."""
    if study.judge is None:
        return None
    trained = {k: [r.path for r in g] for k, g in runs.items() if any(r.iterations for r in g)}
    untrained = {k: g[0].path for k, g in runs.items() if g and not any(r.iterations for r in g)}
    return study_judgements(study, trained, untrained, outputs, extra)


def judged_section(study: Study, judged) -> str:
    """The section of the study's ``judge: N`` (empty without it): the judged table (``study_judged``) and what it
    reads."""
    if judged is None:
        return ""
    n = study.judge
    priors, settings, soups = judged
    soup_note = """A soup row (the study file's `soup: true`) is the uniform weight soup of the setting's runs
(`rlar-export RUN_DIR... OUT_DIR`: the average of their evaluated weights, one model at the cost of the runs' training),
judged like the prior: its ± is the std over the eval seeds.
""" if soups else ""
    return f"""**Judged over {n} eval seeds** (the study file's `judge: {n}`): each run's final policy and the prior,
evaluated by the judge under eval seeds `eval.seed` to `eval.seed + {n - 1}` at their own sampling settings
(`rlar-eval RUN_DIR --judge {n}`; each run's `eval/judge-*/judge.json`). The prior's rows, and those of settings
that train nothing (their seeds repeat one evaluation, so one run is judged), come first: their ± is the std over
the eval seeds (one evaluation's noise); a trained setting's is the std over its runs of each run's {n}-seed mean.
{soup_note}
{judged_table(priors, settings, soups)}
"""


def eval_model_notes(cfg) -> str:
    """The bullets that explain ``eval_model_table``'s columns."""
    if not cfg.eval.get("classifier"):
        return ""
    guided = cfg.eval.get("guided_cfg_scale")
    text = ("\n- **eval/fd**: the Fréchet distance between the embedded digits classifier's features of the samples "
            "and of the held-out digits (lower is better; it falls with the number of samples, so compare within "
            f"one table: here {cfg.eval.samples_per_item} per digit); **eval/class_acc**: the share of samples the "
            "classifier reads as the class they were asked for; **eval/precision**, **eval/recall**: improved "
            "precision (fidelity: the share of samples inside the held-out digits' 3-nearest-neighbour manifold in "
            "the same feature space) and recall (the share of held-out digits inside the samples' manifold); "
            "**eval/density**, **eval/coverage**: the same from the held-out digits' 5-nearest-neighbour balls alone "
            "(density: how many balls hold a sample, per sample over 5, 1 for samples spread like the digits; "
            "coverage: the share of balls that hold a sample), which an outlying sample cannot widen as it widens "
            "recall; "
            "**eval/diversity**: the samples' mean within-class feature distance relative to the held-out digits' "
            "(1 = as varied, 0 = one image per class); **eval/memorization**: the share of samples nearer a train "
            "digit than 95 % of the held-out digits are (about 0.05 for novel samples, 1 when every sample copies a "
            "train digit), which the other columns, read against held-out digits only, cannot see; *change*: final "
            "mean relative to the prior's.")
    if guided is not None:
        text += f"\n- **eval_cfg/***: the same evaluation sampled with classifier-free guidance scale {guided}."
    return text


def attribute_notes(runs: dict[str, list[Run]]) -> str:
    """The bullet that explains the attribute table, when the runs measured the prompts' checks."""
    if not measured_columns(runs, ATTRIBUTE_COLUMNS):
        return ""
    return ("\n- **eval/attr/***: each sample checked against its prompt (docs/text_conditioning.md): *class_acc* the "
            "judge's reading of the class, *thickness_acc* and *slant_acc* the pixel measurements (among the prompts "
            "that ask them), *all_acc* every check of the prompt passed.")


def by_judge(runs: dict[str, list[Run]]) -> bool:
    """Whether every run has the judge's final eval/fd (then settings are ranked by it)."""
    return all(r.summary.get("eval_fd_after") is not None for group in runs.values() for r in group)


def ranking_basis(runs: dict[str, list[Run]], judged) -> str:
    """What ``ranking`` orders the settings by, for the report's text."""
    if judged is not None:
        return "the judged eval/fd above (lower first; std: over a setting's runs, or an untrained one's eval seeds)"
    if by_judge(runs):
        return "mean final eval/fd (lower first; each run's last evaluation)"
    return "mean final eval reward"


def ranking(runs: dict[str, list[Run]], judged=None) -> str:
    """Settings from best to worst, each step with its size in standard deviations: by the judged eval/fd where the
    study is judged (``study_judged``: over a trained setting's runs, each the mean over the eval seeds; over an
    untrained setting's eval seeds); else by mean final eval/fd (the judge, the same for every setting) when every
    run has it; else by mean final eval reward, only the settings that train (and so evaluate) with the first
    setting's reward and do not z-score it (its mean is 0 by construction), the others named apart."""
    fd = judged is not None or by_judge(runs)
    if judged is not None:
        priors, settings, _ = judged
        comparable = {label: [-r["eval/fd"]["mean"] for r in settings[label]] if label in settings
                      else [-v for v in priors[label]["eval/fd"]["values"]] for label, group in runs.items() if group}
    elif fd:
        comparable = {label: [-r.summary["eval_fd_after"] for r in group] for label, group in runs.items() if group}
    else:
        first = next((g[0].reward for g in runs.values() if g and not g[0].reward_normalized), None)
        comparable = {label: [r.after for r in group] for label, group in runs.items()
                      if group and group[0].reward == first and not group[0].reward_normalized}
    if not comparable:
        return "none: the eval reward of a mix that z-scores its terms is 0 by construction (read its terms)"
    stats = [(*mean_and_std(a), label) for label, a in comparable.items()]
    stats.sort(reverse=True)
    digits = 2 if fd else 4
    text = f"{stats[0][2]}"
    for (m1, s1, _), (m2, s2, label) in zip(stats, stats[1:], strict=False):
        spread = max(s1, s2)
        size = f", {(m1 - m2) / spread:.1f} std" if spread > 0 else ""
        text += f" > {label} (Δ {m1 - m2:.{digits}f}{size})"
    apart = [label for label, group in runs.items() if group and label not in comparable]
    if apart:
        text += f"; not ranked, as their eval reward is another function (or a z-scored mix's): {', '.join(apart)}"
    return text


PANELS = (  # tag, moving-average window, title, y label, y scale
    ("eval/reward", 1, "eval/reward (held-out, free-running)", "mean reward (higher is better)", "linear"),
    ("eval/fd", 1, "eval/fd (the judge)", "Fréchet distance (lower is better)", "log"),
    ("eval/class_acc", 1, "eval/class_acc (the judge)", "class accuracy (higher is better)", "linear"),
    ("eval/recall", 1, "eval/recall (the judge)", "recall (diversity, higher is better)", "linear"),
    ("reward/mean", 10, "reward/mean (rollouts, 10-iteration average)", None, "linear"),
)
ZSCORED_TAGS = ("eval/reward", "reward/mean")  # a mix z-scored over the batch has a mean of 0 in every batch


def plotted(group: list[Run], tag: str, zscored_means: bool = False) -> bool:
    """Whether a setting's runs have a curve for ``tag`` worth drawing: not a z-scored reward's mean, unless
    ``zscored_means`` (when nothing else was measured)."""
    if tag in ZSCORED_TAGS and all(r.reward_normalized for r in group) and not zscored_means:
        return False
    return any(r.curves.get(tag) for r in group)


def plot_curves(runs: dict[str, list[Run]], path: Path, title: str) -> None:
    """``curves_figure`` as a PNG."""
    fig = curves_figure(runs, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(runs: dict[str, list[Run]], title: str) -> plt.Figure:
    """Each panel's curve per setting (mean over seeds, min–max band): the eval reward, the judge's eval/fd, class
    accuracy and recall where measured, and the rollout reward (10-iteration moving average). A setting that trains
    nothing is one point at iteration 0. The legend, one entry per setting, goes below the panels."""
    zscored_means = not any(plotted(group, p[0]) for p in PANELS for group in runs.values())  # nothing else to draw
    panels = [p for p in PANELS if any(plotted(group, p[0], zscored_means) for group in runs.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2 + 0.2 * len(runs)), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    palette = plt.get_cmap("tab20").colors  # ten dark colours, then their light pairs: one per setting
    colors = itertools.cycle(palette[::2] + palette[1::2])
    for (label, group), color in zip(runs.items(), colors, strict=False):
        for ax, (tag, window, *_) in zip(axes, panels, strict=True):
            curves = [r.curves.get(tag, {}) for r in group]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if plotted(group, tag, zscored_means) else []
            if not steps:
                continue
            values = [[moving_average(c, steps, window)[i] for c in curves] for i in range(len(steps))]
            ax.plot(steps, [statistics.mean(v) for v in values], color=color, label=f"{label} (n={len(group)})",
                    marker="o" if tag.startswith("eval/") else None, markersize=3)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.2)
    for ax, (_, _, panel_title, ylabel, scale) in zip(axes, panels, strict=True):
        ax.set(title=panel_title, xlabel="iteration", ylabel=ylabel, yscale=scale)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncols=1 if len(panels) < 3 else 2)
    fig.suptitle(textwrap.fill(f"{title}: mean over seeds, band = min–max", 40 * len(panels)))
    return fig


def moving_average(curve: dict[int, float], steps: list[int], window: int) -> list[float]:
    """The trailing mean of the last ``window`` values at each of ``steps``."""
    values = [curve[s] for s in steps]
    return [statistics.mean(values[max(0, i + 1 - window): i + 1]) for i in range(len(values))]


def study_command(study: Study, extra: list[str] = ()) -> str:
    """``python -m rlar.studies.ablation <study> [extra]``: what runs the study's runs with ``extra``."""
    return shlex.join(["python", "-m", "rlar.studies.ablation", study.name, *extra])


def make_command(study: Study, extra: list[str] = ()) -> str:
    """``make ablation STUDY=<study> [ARGS='extra']``: the same as :func:`study_command`."""
    return f"make ablation STUDY={study.name}" + (f" ARGS={shlex.quote(shlex.join(extra))}" if extra else "")


def either(values) -> str:
    """The distinct ``values``, sorted: ``a``, ``a or b``, ``a, b or c``."""
    distinct = [str(v) for v in sorted(set(values))]
    return " or ".join([", ".join(distinct[:-1]), distinct[-1]] if len(distinct) > 2 else distinct)


def write_report(study: Study, outputs: str | Path = "outputs", report_dir: str | Path | None = None,
                 extra: list[str] = ()) -> Path:
    """Write ``REPORT.md`` and ``curves.png`` into ``report_dir`` (default: ``experiments/<study>/``). With the
    study's ``judge: N``, judge what is not judged yet. ``extra``: the command line's overrides, which every run had
    (the report reads only the runs made with them) and the judge is given (e.g. the thread count)."""
    runs = collect_runs(study, outputs, extra)
    if not any(runs.values()):
        raise FileNotFoundError(f"no finished runs of study {study.name!r} with the extra overrides {list(extra)} "
                                f"under {sweep_dir(outputs)}; run them first: {study_command(study, extra)}")
    out = Path(report_dir or study.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out / "curves.png", study.title)
    every = [r for group in runs.values() for r in group]
    cfg = OmegaConf.load(every[0].path / ".hydra" / "config.yaml")
    iterations = either(r.iterations for r in every)
    eval_every = either(OmegaConf.load(r.path / ".hydra" / "config.yaml").eval.every for r in every)
    threads = cfg.hardware.get("num_threads") or "null"
    n_eval = cfg.eval.max_items
    reward = either(f"`reward={OmegaConf.load(r.path / '.hydra' / 'hydra.yaml').hydra.runtime.choices.reward}`"
                    for r in every)
    spi = cfg.eval.samples_per_item
    samples = "one free-running sample" if spi == 1 else f"each of {spi} free-running samples"
    held_out = "every held-out digit" if n_eval is None else f"the first {n_eval} held-out digits"
    judged = study_judged(study, runs, outputs, extra)
    text = f"""# {study.title}

- **command**: `{make_command(study, extra)}` (or `{study_command(study, extra)}`); the study file is
  [`experiments/{study.name}.yaml`](../{study.name}.yaml)
- **config**: the embedded default with {" ".join(f"`{o}`" for o in study.overrides) or "no other overrides"}:
  {iterations} RL iterations, an evaluation every {eval_every} (as the setting says)
- **seeds**: {", ".join(str(s) for s in study.seeds)} per setting (`hardware.seed` seeds RL; every run starts
  from the same cached prior, pretrained with seed 0)
- **written**: {datetime.date.today().isoformat()}, from runs with
  `hardware.device={cfg.hardware.device} hardware.num_threads={threads}`
- **spread**: ± is the sample standard deviation over the seeds; a rerun's means should land within it

{study.notes}

{table(study, runs)}

{eval_model_table(runs)}

{eval_model_table(runs, ATTRIBUTE_COLUMNS)}

{reward_terms_table(runs)}

{judged_section(study, judged)}

**Ranking** by {ranking_basis(runs, judged)} (Δ: the step to the next setting, and its size in units of the larger
of the two settings' std): {ranking(runs, judged)}.

- **eval reward**: the mean over {held_out} of the training reward ({reward}, as the setting says) of
  {samples} (fixed sampling seed), higher is better; *prior* is the same evaluation before RL, *change* the final
  mean relative to it. A reward that learns while it trains (`discriminator`, `loo_fd`) is read as it is at each
  evaluation, so its prior and final values come from different versions of it: read the judge's columns.\
{zscored_note(runs)}\
{reward_terms_notes(runs)}{eval_model_notes(cfg)}{attribute_notes(runs)}
- *per seed* lists each seed's final eval reward in the order of the *seeds* column; *s / it* is the mean wall
  time of one iteration (rollout, decode, reward, update: TensorBoard `time/*`) on the machine that ran it,
  which others may have been using too.

![curves per setting: the judge's eval/fd, class accuracy, recall and the reward (mean, min–max band)](curves.png)

**Reproduce.** The command runs each setting as one Hydra multirun over the seeds (`--dry-run` prints them),
then rewrites this file from the runs in `outputs/ablations/multirun/<overrides>/` (finished runs are reused,
unfinished ones resumed; studies share their common runs). A run is deterministic for a seed, machine and
thread count, so the per-seed values repeat exactly there; elsewhere, expect each mean within the ± above.
"""
    atomic_write_text(out / "REPORT.md", text)
    return out / "REPORT.md"

