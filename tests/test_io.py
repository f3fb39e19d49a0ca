"""ncood.io: the one JSON sanitiser, the one YAML reader, atomic JSON; and the one device
resolution (ncood.distributed.resolve_device).

References: the standard library's ``json`` with ``allow_nan=False`` (what a strict reader
such as a browser's ``JSON.parse`` accepts) and PyYAML's own parse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ncood.distributed import resolve_device
from ncood.errors import ConfigError
from ncood.io import load_yaml, to_jsonable, write_json


def test_to_jsonable_gives_strict_json():
    obj = {
        1: np.float32(2.5),
        "array": np.arange(6, dtype=np.int64).reshape(2, 3),
        "nan": float("nan"),
        "inf": np.float64(-np.inf),
        "path": Path("/a/b"),
        "tuple": (1, np.int16(2), np.bool_(True)),
        "nested": {"x": [np.float64(0.1), None, "s"]},
    }
    doc = to_jsonable(obj)
    text = json.dumps(doc, allow_nan=False)  # raises on NaN/inf or numpy types
    assert json.loads(text) == {
        "1": 2.5,
        "array": [[0, 1, 2], [3, 4, 5]],
        "nan": None,
        "inf": None,
        "path": "/a/b",
        "tuple": [1, 2, True],
        "nested": {"x": [0.1, None, "s"]},
    }
    assert type(doc["tuple"][2]) is bool and type(doc["array"][0][0]) is int
    with pytest.raises(TypeError, match="set"):
        to_jsonable({"bad": {1, 2}})


def test_write_json_is_strict_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": np.float64(1.5), "b": [float("nan"), math.pi]})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [None, math.pi]}
    assert "NaN" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left


def test_load_yaml(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("epochs: 3\nlr: 0.1\nsnapshots: [0, 1]\n")
    assert load_yaml(good) == {"epochs": 3, "lr": 0.1, "snapshots": [0, 1]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml' does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="train config file .* must hold a mapping.*list"):
        load_yaml(listing, "train config file")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu"), local_rank=1) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device().type == want
    with pytest.raises(ConfigError, match="'device' parameter .* Got 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:  # under torchrun a bare "cuda" is this process's GPU
        n = torch.cuda.device_count()
        assert resolve_device("cuda", local_rank=n + 1) == torch.device("cuda", (n + 1) % n)
        assert resolve_device("cuda") == torch.device("cuda")


def test_progress_bar_is_silent_unless_asked_for_on_a_terminal(capsys):
    from ncood.io import progress_bar

    for enabled in (True, False):  # pytest's stderr is not a terminal: never drawn
        bar = progress_bar(10, "work", enabled=enabled, unit="step")
        assert bar.disable
        bar.update(10)
        bar.close()
    assert capsys.readouterr().err == ""
