"""Config-file studies: ``python -m rlar.studies.ablation <study> [overrides]`` (``rlar-ablation``, ``make ablation``).

A study is one YAML in ``experiments/``: fixed ``overrides``, the ``seeds``, and named ``settings`` (each a list
of overrides). Every setting is one Hydra multirun over the seeds, run one after another; then the report
(``rlar/studies/report.py``) is written beside the YAML. All studies share Hydra's run dirs, ``outputs/ablations/
multirun/<overrides>``: running a study again resumes unfinished runs and only re-reads finished ones, and a run
that two studies share (their common baseline) is trained once.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.studies.report import write_report
from rlar.studies.study import RUN_NAME, Study, load_study, sweep_dir


def sweep_commands(study: Study, extra: list[str] = (), outputs: str | Path = "outputs") -> list[list[str]]:
    """One ``python -m rlar.run -m ...`` per setting; ``extra`` overrides go to every run."""
    seeds = ",".join(str(s) for s in study.seeds)
    where = [] if Path(outputs) == Path("outputs") else [f"hydra.sweep.dir={sweep_dir(outputs)}"]
    return [[sys.executable, "-m", "rlar.run", "-m", f"name={RUN_NAME}", *study.run_overrides(label),
             f"hardware.seed={seeds}", *extra, *where] for label in study.settings]


def run_sweeps(study: Study, extra: list[str] = (), outputs: str | Path = "outputs") -> None:
    """Run every setting's multirun, one after the other; stops at the first failing one."""
    for cmd in sweep_commands(study, extra, outputs):
        print("+", shlex.join(["python", *cmd[1:]]), flush=True)
        run_until_it_stops(cmd)


def run_until_it_stops(cmd: list[str]) -> None:
    """``subprocess.run(cmd, check=True)``, but a Ctrl-C, which the run receives too and answers by saving at the end
    of its step, waits for the run to stop instead of killing it (``subprocess.run`` kills it a quarter of a second
    later, before it has saved); a second Ctrl-C kills it."""
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        print("interrupted: the run saves at the end of its step, then stops (Ctrl-C again kills it)", flush=True)
        try:
            proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def check_settings(study: Study, extra: list[str]) -> None:
    """Compose and check every setting's config (with the command line's ``extra``) before any of them runs: a typo
    or a sweep (``lr=1e-4,3e-4``) in a later setting is refused before the earlier ones train, naming the setting."""
    for label in study.settings:
        try:
            check_config(compose_config([*study.run_overrides(label), *extra]))
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise ValueError(f"study {study.name!r}, setting {label!r}: {e}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlar-ablation", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a name in experiments/ (e.g. algorithms) or the path of a study YAML")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. hardware.num_threads=1")
    parser.add_argument("--outputs", default="outputs", help="the outputs root the runs write to (default: outputs)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs (and, with "
                        "the study's judge: N, judge the runs not judged yet)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the flags: cfg --report-only hardware.x=1
    try:
        study = load_study(args.study)
        check_settings(study, args.overrides)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if args.dry_run:
        commands = sweep_commands(study, args.overrides, args.outputs)
        print("\n".join(shlex.join(["python", *cmd[1:]]) for cmd in commands))
        return
    if not args.report_only:
        run_sweeps(study, args.overrides, args.outputs)
    report = write_report(study, args.outputs, extra=args.overrides)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
