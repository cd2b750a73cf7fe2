"""Quality vs decoding steps of the frozen ARPG prior: fixed arccos schedules against the learned schedule.

``python -m rlar.studies.schedule_study [overrides]`` (``make schedules``): for every seed, evaluates the prior with
the fixed arccos schedule at each of ``--steps``, trains ``experiment=arpg_schedule`` (``hardware.seed`` = seed;
finished runs are re-read, unfinished ones resume), evaluates the fixed schedule again at each learned schedule's
rounded mean step count, and writes ``experiments/arpg_schedule/REPORT.md`` and ``curves.png``. Every evaluation
of seed s (fixed or learned) samples with ``eval.seed`` = 1234 + s, so the spread over seeds includes the
sampling noise of ``eval/fd``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from contextlib import closing
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlar.config.store import compose_config  # noqa: E402
from rlar.eval.evaluate import evaluate  # noqa: E402
from rlar.eval.model import build_eval_model  # noqa: E402
from rlar.eval.rejudge import settings_key  # noqa: E402
from rlar.loop import train_rl_loop  # noqa: E402
from rlar.reward.build import build_reward  # noqa: E402
from rlar.rollout.sampling import evaluation_sampling  # noqa: E402
from rlar.runtime.atomic_files import atomic_write_text  # noqa: E402
from rlar.studies.report import mean_and_std, mean_std  # noqa: E402
from rlar.text.build import build_text_encoder  # noqa: E402

REPORT_DIR = Path(__file__).resolve().parents[2] / "experiments" / "arpg_schedule"
# the report's columns after the step count: metric and decimals
COLUMNS = (("eval/reward", 3), ("eval/fd", 1), ("eval/class_acc", 3), ("eval/precision", 3), ("eval/recall", 3),
           ("eval/coverage", 3))
METRICS = (*(metric for metric, _ in COLUMNS), "eval/steps")  # what each evaluation keeps


def seed_config(overrides: list[str], seed: int):
    return compose_config(["experiment=arpg_schedule", f"hardware.seed={seed}", f"eval.seed={1234 + seed}",
                           *overrides])


def fixed_points(overrides: list[str], seed: int, steps: list[int]) -> dict[int, dict[str, float]]:
    """``{N: {metric: value}}``: the prior decoded with the fixed arccos schedule in N steps, on the device and at
    the precision of ``hardware`` (as the learned schedule's runs)."""
    cfg = seed_config(overrides, seed)
    hw = instantiate(cfg.hardware)
    hw.setup()
    try:
        return arccos_points(cfg, hw, seed, steps)
    finally:
        hw.teardown()


def arccos_points(cfg, hw, seed: int, steps: list[int]) -> dict[int, dict[str, float]]:
    """:func:`fixed_points` on ``hw`` (set up)."""
    device = hw.torch_device
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    prior = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=build_text_encoder(cfg))
    tokenizer, prior = tokenizer.to(device), prior.to(device)
    eval_model = build_eval_model(data, cfg.eval, cfg.cache_dir, device)
    sampling = evaluation_sampling(cfg.rollout, prior.block_size)
    points = {}
    with closing(build_reward(cfg, data)) as reward:  # a remote reward closes its client
        for n in steps:
            prior.decoding = {**prior.decoding, "num_iter": n, "schedule": "arccos"}
            result = evaluate(prior, tokenizer, reward, data, cfg.eval, sampling, device, hw.autocast, eval_model)
            points[n] = {k: result[k] for k in METRICS}
            print(f"seed {seed} fixed arccos {n} steps: {points[n]}", flush=True)
    return points


def learned_point(overrides: list[str], seed: int, outputs: Path) -> dict[str, dict[str, float]]:
    """Train (or re-read) the learned schedule of ``seed``: its evaluation before and after RL. Its folder,
    ``seed<s>-<key>``, is keyed by the whole config but ``train.iterations``, so a run made under other overrides is
    never read as this one, and more iterations extend it (as a run directory's name leaves them out)."""
    cfg = seed_config(overrides, seed)
    out = outputs / f"seed{seed}-{settings_key(OmegaConf.merge(cfg, {'train': {'iterations': 0}}))}"
    summary_path = out / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text())["iterations"] == cfg.train.iterations:
        summary = json.loads(summary_path.read_text())
    else:
        summary = train_rl_loop(cfg, out)
    history = summary["history"]
    points = {"before": {k: history[0][k] for k in METRICS}, "after": {k: history[-1][k] for k in METRICS}}
    print(f"seed {seed} learned: {points}", flush=True)
    return points


def per_seed(points: list[dict]) -> str:
    return " / ".join(f"{p['eval/fd']:.1f}" for p in points)


def row(label: str, steps: str, points: list[dict]) -> str:
    """One table row: the mean ± std over seeds of every column, then each seed's eval/fd."""
    cells = [mean_std([p[metric] for p in points], digits) for metric, digits in COLUMNS]
    return f"| {label} | {steps} | {' | '.join(cells)} | {per_seed(points)} |"


def write_report(fixed: dict[int, dict[int, dict]], learned: dict[int, dict], overrides: list[str],
                 report_dir: Path) -> Path:
    seeds = sorted(learned)
    lines = ["# Learned decoding schedule vs fixed arccos (frozen tiny ARPG, embedded default)", "",
             f"`{shlex.join(['python', '-m', 'rlar.studies.schedule_study', *overrides])}`", "",
             f"Seeds {seeds}; every row: one sample per held-out digit (359), `eval.seed` = 1234 + seed; mean ± std "
             "over seeds. Learned: `experiment=arpg_schedule` (GRPO, reward perceptual_digits + 0.5 efficiency).",
             "Every evaluation is read by the judge, which no reward reads; eval reward: the training reward "
             "(perceptual_digits + 0.5 efficiency) of the same samples.", "",
             "| decoding | steps | eval reward | " + " | ".join(m for m, _ in COLUMNS[1:]) + " | per seed fd |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for n in sorted({n for per_seed in fixed.values() for n in per_seed}):
        lines.append(row("fixed arccos", str(n), [fixed[s][n] for s in seeds if n in fixed[s]]))
    for when, label in (("before", "learned, before RL (uniform degrees, random order)"), ("after", "learned")):
        pts = [learned[s][when] for s in seeds]
        lines.append(row(label, mean_std([p["eval/steps"] for p in pts], 2), pts))
    path = report_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n\n![quality vs steps](curves.png)\n")
    return path


def plot(fixed: dict[int, dict[int, dict]], learned: dict[int, dict], path: Path) -> None:
    seeds = sorted(learned)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, metric, label in zip(axes, ("eval/fd", "eval/class_acc"), ("eval/fd (lower is better)",
                                                                       "eval/class_acc (higher is better)"),
                                 strict=True):
        steps = sorted({n for per_seed in fixed.values() for n in per_seed})
        stats = [mean_and_std([fixed[s][n][metric] for s in seeds if n in fixed[s]]) for n in steps]
        ax.errorbar(steps, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                    label="fixed arccos")
        for when, marker, name in (("before", "s", "learned, before RL"), ("after", "*", "learned (GRPO)")):
            xs = [learned[s][when]["eval/steps"] for s in seeds]
            ys = [learned[s][when][metric] for s in seeds]
            ax.scatter(xs, ys, marker=marker, s=40, alpha=0.4, color="C1" if when == "after" else "C2")
            (mx, sx), (my, sy) = mean_and_std(xs), mean_and_std(ys)
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], marker=marker, markersize=12, capsize=3, linestyle="none",
                        color="C1" if when == "after" else "C2", label=f"{name} (mean over seeds)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decoding steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Frozen tiny ARPG on the digits: quality vs steps (seeds {seeds})")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlar-schedule-study", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="overrides for every run, e.g. hardware.num_threads=1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--outputs", type=Path, default=Path("outputs/arpg_schedule_study"))
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    learned = {s: learned_point(args.overrides, s, args.outputs) for s in args.seeds}
    matched = sorted({round(p["after"]["eval/steps"]) for p in learned.values()} - set(args.steps))
    fixed = {s: fixed_points(args.overrides, s, sorted({*args.steps, *matched})) for s in args.seeds}
    atomic_write_text(args.outputs / "points.json", json.dumps({"fixed": fixed, "learned": learned}, indent=1))
    args.report_dir.mkdir(parents=True, exist_ok=True)
    plot(fixed, learned, args.report_dir / "curves.png")
    print(f"report: {write_report(fixed, learned, args.overrides, args.report_dir)}")


if __name__ == "__main__":
    main()
