"""Every command the README and docs/ show still works as written: each `--flag` is one its program takes, and its
key=value overrides compose into a config that passes the checks of `python -m rlar.run`, unless the only thing
missing is what the reader supplies (a file the command names, the Inception weights, GPUs, torchrun)."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "experiments").rglob("*.md")),
         *sorted((REPO / "rlar" / "conf").rglob("*.yaml"))]

# how a command names its program -> the module whose parser reads its flags (None: Hydra's own flags)
PROGRAMS = {
    "rlar-run": None, "rlar.run": None, "rlar-prepare": None, "rlar.prepare": None,
    "rlar-eval": "rlar.eval.cli", "rlar.eval": "rlar.eval.cli",
    "rlar-export": "rlar.export", "rlar.export": "rlar.export",
    "rlar-ablation": "rlar.studies.ablation", "rlar.studies.ablation": "rlar.studies.ablation",
    "rlar-reward-server": "rlar.reward.remote.server", "rlar.reward.remote.server": "rlar.reward.remote.server",
    "rlar-reward-launch": "rlar.reward.remote.launch",
    "rlar.studies.filter_ceiling": "rlar.studies.filter_ceiling",
    "rlar.studies.data_reference": "rlar.studies.data_reference",
    "rlar.studies.gpu_check": "rlar.studies.gpu_check", "rlar.studies.rehearsal": "rlar.studies.rehearsal",
    "rlar.studies.schedule_study": "rlar.studies.schedule_study", "rlar.data.memory_bench": "rlar.data.memory_bench",
}
HYDRA_FLAGS = {"--help", "--cfg", "--package", "--multirun", "--info", "--resolve"}
COMMAND = re.compile(r"(?:python -m |-m |\b)(rlar[-.][a-z_.-]*[a-z])(?![\w.-])(.*)")
OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.@]*(?:/[\w.]+)?=")  # key=value, +key=value, group/option=value
CPU_STAND_IN = ["hardware.device=cpu", "hardware.strategy=none", "hardware.precision=fp32"]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, program, arguments)`` of each command in the pages: in code blocks up to a ``#`` comment (a
    trailing backslash continues it), in inline code up to the closing backtick."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        if page.suffix == ".yaml":  # the commands of a config file are in its comments
            lines = [re.sub(r"^\s*# ?", "", line) for line in lines]
        for number, line in enumerate(lines, 1):
            for inline in (re.findall(r"`([^`]+)`", line) or [line]):
                match = COMMAND.search(inline)
                if not match or match.group(1) not in PROGRAMS:
                    continue
                rest, follow = match.group(2), number
                while rest.rstrip().endswith("\\") and follow < len(lines):
                    rest = rest.rstrip()[:-1] + " " + lines[follow]
                    follow += 1
                rest = re.split(r"\s#\s|\s\(", rest)[0]  # up to a comment or a remark in parentheses
                if inline[:match.start()].rstrip().endswith("("):  # the command is itself in parentheses
                    rest = rest.split(")")[0]
                try:
                    arguments = shlex.split(rest)
                except ValueError:  # prose, not a command
                    continue
                found.append((f"{page.name}:{number}", match.group(1), arguments))
    return found


COMMANDS = documented_commands()


def help_text(module: str, monkeypatch, capsys) -> str:
    """What ``module``'s command prints for ``--help``."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit):
        importlib.import_module(module).main()
    return capsys.readouterr().out


def overrides_of(arguments: list[str]) -> list[str]:
    """The key=value overrides, each sweep at its first value (``a=1,2`` -> ``a=1``, ``choice(1,2)`` -> ``1``)."""
    kept = []
    for arg in arguments:
        if not OVERRIDE.match(arg) or arg.split("=", 1)[0].startswith(("outputs/", "shared/")) or "<" in arg:
            continue  # a path, or a placeholder such as name=ablations/<study>
        key, value = arg.split("=", 1)
        if choice := re.fullmatch(r"choice\(([^,)]+).*\)", value):
            value = choice.group(1)
        elif not value.startswith("["):
            value = value.split(",")[0]
        kept.append(f"{key}={value}")
    return kept


def test_the_pages_show_commands_of_every_kind():
    programs = {program for _, program, _ in COMMANDS}
    assert len(COMMANDS) > 60 and {"rlar.run", "rlar-eval", "rlar-export", "rlar-reward-server"} <= programs


@pytest.mark.parametrize("program", sorted({PROGRAMS[p] for _, p, _ in COMMANDS if PROGRAMS[p]}))
def test_every_documented_flag_is_one_the_program_takes(program, monkeypatch, capsys):
    takes = set(re.findall(r"--[a-z][a-z-]*", help_text(program, monkeypatch, capsys)))
    unknown = [(where, flag) for where, name, arguments in COMMANDS if PROGRAMS[name] == program
               for flag in arguments if flag.startswith("--") and flag.split("=")[0] not in takes]
    assert not unknown, f"the docs give flags {program} does not take: {unknown}"


def test_the_documented_flags_of_rlar_run_are_hydras():
    unknown = [(where, a) for where, name, arguments in COMMANDS if PROGRAMS[name] is None
               for a in arguments if a.startswith("--") and a not in HYDRA_FLAGS]
    assert not unknown


@pytest.mark.parametrize("where,program,arguments", [pytest.param(where, program, arguments, id=where)
                                                     for where, program, arguments in COMMANDS
                                                     if overrides_of(arguments)])
def test_the_documented_overrides_compose_and_pass_the_checks(where, program, arguments):
    overrides = overrides_of(arguments)
    if any(o.startswith("hydra.searchpath") for o in overrides):
        pytest.skip("selects options from the reader's own config folder")
    needs_gpus = any(o.startswith(("hardware", "experiment=llamagen", "experiment=vapi_llamagen")) for o in overrides)
    study = ["experiment=arpg_schedule"] if program == "rlar.studies.schedule_study" else []  # its runs' base
    cfg = compose_config(study + overrides + (CPU_STAND_IN if needs_gpus else []))
    supplied = [o.split("=", 1)[1] for o in overrides if re.search(r"[/.]", o.split("=", 1)[1])]
    try:
        check_config(cfg)
    except ConfigError as e:  # the files the command names are the reader's; so are the Inception weights
        if not any(f"'{path}'" in str(e) for path in supplied) and "Inception weights not found" not in str(e):
            raise
