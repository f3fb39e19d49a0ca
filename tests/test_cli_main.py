"""The ``ncood`` command itself: fast start, global flags anywhere, safe in pipes, ``list``."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import typing

import pytest

from ncood.cli.main import EXIT_BROKEN_PIPE, build_parser, main

# Top-level packages that `ncood --help` must not import (each costs 0.1-2 s to load).
HEAVY = (
    "jinja2",
    "jsonschema",
    "matplotlib",
    "numpy",
    "pandas",
    "PIL",
    "scipy",
    "skimage",
    "sklearn",
    "torch",
    "torchvision",
    "tqdm",
    "yaml",
)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.slow
def test_building_the_parser_imports_no_heavy_module():
    # A fresh interpreter: this process has long imported torch & co. for other tests.
    code = (
        "import sys, ncood.cli.main as m; m.build_parser(); "
        f"print(sorted({{k.split('.')[0] for k in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", (
        f"building the parser imported {out.stdout.strip()}; import them inside the "
        "subcommand's run function (`ncood --help` must answer within 1 s)"
    )


def test_train_flags_cover_every_train_config_field():
    """cli/train.py lists the fields by hand (no torch at parse time); keep them in step."""
    from ncood.cli.train import FIELD_KINDS
    from ncood.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    expected = {}
    for f in dataclasses.fields(TrainConfig):
        args = set(typing.get_args(hints[f.name])) | {hints[f.name]}
        if f.name == "snapshots":
            kind = "snapshots"
        elif f.name == "model_kwargs":
            kind = "json"
        elif bool in args:
            kind = "bool"
        elif int in args:
            kind = "int"
        elif float in args:
            kind = "float"
        else:
            kind = "str"
        expected[f.name] = kind
    assert FIELD_KINDS == expected


@pytest.mark.parametrize(
    "argv, quiet, debug",
    [
        (["list", "detectors"], False, False),
        (["-q", "list", "detectors"], True, False),
        (["list", "detectors", "-q"], True, False),
        (["list", "detectors", "--debug"], False, True),
        (["--debug", "list", "-q", "detectors"], True, True),
        (["--quiet", "list", "detectors", "--debug"], True, True),
    ],
)
def test_global_flags_before_or_after_the_subcommand(argv, quiet, debug):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.debug) == (quiet, debug)


def test_every_subcommand_accepts_the_global_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        flags = {s for a in subparser._actions for s in a.option_strings}
        assert {"-q", "--quiet", "--debug"} <= flags, name


def test_debug_prints_the_traceback_and_keeps_the_exit_status(tmp_path, capsys):
    argv = ["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("ncood train: error: config file")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    """`ncood list datasets | head -0`: no BrokenPipeError traceback, 141 like SIGPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ncood.cli.main", "list", "datasets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader goes away before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err, err


@pytest.mark.slow
def test_a_closed_pipe_with_head_in_a_shell(tmp_path):
    script = tmp_path / "many_lines.py"
    script.write_text(
        "import sys\nfrom ncood.cli.main import main\n"
        "import ncood.cli.list as l\n"
        "l.entries = lambda kind: [(f'n{i:06d}', 'x' * 50) for i in range(200_000)]\n"
        "sys.exit(main(['list', 'models']))\n"
    )
    out = subprocess.run(
        f"{sys.executable} {script} | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.splitlines() == [f"n000000  {'x' * 50}", f"n000001  {'x' * 50}"]
    assert out.stderr == ""


@pytest.mark.parametrize("kind", ["models", "datasets", "detectors", "regimes"])
def test_list_prints_every_registered_name_with_a_description(kind, capsys):
    from ncood.data import list_datasets
    from ncood.detectors import list_detectors
    from ncood.models import list_models
    from ncood.train import list_regimes

    names = {
        "models": list_models,
        "datasets": list_datasets,
        "detectors": list_detectors,
        "regimes": list_regimes,
    }[kind]()
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines]
    extra = {"datasets": ["folder:PATH", "npz:PATH"], "detectors": ["odin"]}.get(kind, [])
    assert listed == [*names, *extra]
    for line in lines:
        name, _, text = line.partition("  ")
        assert text.strip(), f"{name} has no description"


def test_list_rejects_an_unknown_kind(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "detector"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_extract_options_state_their_defaults():
    for action in _subparser("extract")._actions:
        if not action.option_strings or action.dest in ("help", "debug", "quiet"):
            continue
        assert action.help, f"{action.option_strings} has no help text"
        if not action.required:
            assert "default" in action.help, f"{action.option_strings}: {action.help!r}"
    help_text = _subparser("extract").format_help()
    assert "(default: 512)" in help_text and "(default: auto)" in help_text


def test_run_records_the_device_actually_used():
    import torch

    from ncood.pipeline import environment

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert environment("auto")["device"] == expected
    assert environment("cpu")["device"] == "cpu"
