"""Features from files (issue 12 item 3): ``FeatureDir.from_arrays`` and ``.npz`` directories
read by ``ncood score`` / ``ncood collapse`` beside the native layout.

Independent references: a native features directory built by hand from the same arrays
(``FeatureSet``/``FeatureDir`` constructors, logits computed here in closed form), whose
Results rows the ``.npz`` route must reproduce exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from ncood.cli.main import main
from ncood.errors import ConfigError, DataError, ShapeError
from ncood.results import Results
from ncood.types import FeatureDir, FeatureSet, LinearHead, load_feature_dir

C, D, D1 = 4, 12, 6


def _arrays(seed: int = 0) -> dict:
    """Class clusters (ID), shifted clusters (OOD), a head and one extra layer, float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (C, D))
    y_tr = np.repeat(np.arange(C), 30)
    y_te = np.tile(np.arange(C), 10)
    z_tr = (means[y_tr] + rng.normal(0, 1, (len(y_tr), D))).astype(np.float32)
    z_te = (means[y_te] + rng.normal(0, 1, (len(y_te), D))).astype(np.float32)
    z_ood = {
        "far": rng.normal(4, 2, (25, D)).astype(np.float32),
        "near": (means[rng.integers(0, C, 20)] * 0.5 + rng.normal(0, 1.5, (20, D))).astype(
            np.float32
        ),
    }
    w = rng.normal(0, 0.5, (C, D)).astype(np.float32)
    b = rng.normal(0, 0.1, C).astype(np.float32)

    def layer(n):
        return np.abs(rng.normal(0, 1, (n, D1))).astype(np.float32)

    lay = {"train": layer(len(y_tr)), "test": layer(len(y_te))}
    lay |= {k: layer(len(v)) for k, v in z_ood.items()}
    return dict(z_tr=z_tr, y_tr=y_tr, z_te=z_te, y_te=y_te, z_ood=z_ood, w=w, b=b, lay=lay)


def _ref_logits(z, w, b):
    """Closed form ``W z + b`` in float64, stored as float32 like a network's logits."""
    return (z.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)).astype(np.float32)


def _native(a: dict, out, *, logits=None) -> None:
    """The native layout of the same arrays, built with the plain constructors."""
    logits = logits or {}

    def fs(key, z, y=None):
        lg = logits.get(key, _ref_logits(z, a["w"], a["b"]))
        return FeatureSet(z, lg, y, name=key, layers={"blk": a["lay"][key]})

    FeatureDir(
        train=fs("train", a["z_tr"], a["y_tr"]),
        test=fs("test", a["z_te"], a["y_te"]),
        ood={k: fs(k, v) for k, v in a["z_ood"].items()},
        head=LinearHead(a["w"], a["b"]),
        meta={"epoch": None, "layers": ["blk"]},
    ).save(out)


def _npz(a: dict, out, *, logits=None, flat: bool = False) -> None:
    logits = logits or {}
    out.mkdir(parents=True)

    def extra(key):
        d = {"layer.blk": a["lay"][key]}
        if key in logits:
            d["logits"] = logits[key]
        return d

    np.savez(out / "train.npz", features=a["z_tr"], labels=a["y_tr"], **extra("train"))
    np.savez(out / "test.npz", features=a["z_te"], labels=a["y_te"], **extra("test"))
    if not flat:
        (out / "ood").mkdir()
    for k, v in a["z_ood"].items():
        np.savez(out / (f"ood_{k}.npz" if flat else f"ood/{k}.npz"), features=v, **extra(k))
    np.savez(out / "head.npz", W=a["w"], b=a["b"])


def _frame(path) -> pd.DataFrame:
    return Results.load(path).to_frame()


def _score(features, out) -> int:
    argv = ["score", "--features", str(features), "--bootstrap", "20", "--out", str(out), "-q"]
    return main(argv + ["--detectors", "msp,energy,mahalanobis,vim,neco,knn", "--param", "knn.k=5"])


@pytest.mark.parametrize("given_logits", [False, True])
def test_npz_route_gives_the_native_rows(tmp_path, given_logits):
    a = _arrays()
    logits = {}
    if given_logits:  # a model's own logits: close to W z + b, not bit-equal
        rng = np.random.default_rng(5)
        zs = {"train": a["z_tr"], "test": a["z_te"], **a["z_ood"]}
        for key, z in zs.items():
            ref = _ref_logits(z, a["w"], a["b"])
            logits[key] = (ref + rng.normal(0, 1e-4, ref.shape)).astype(np.float32)
    _native(a, tmp_path / "native", logits=logits)
    _npz(a, tmp_path / "npz", logits=logits, flat=given_logits)
    assert _score(tmp_path / "native", tmp_path / "s_native") == 0
    assert _score(tmp_path / "npz", tmp_path / "s_npz") == 0
    ref, got = _frame(tmp_path / "s_native"), _frame(tmp_path / "s_npz")
    assert len(ref) > 6 * 2 * 4 and set(ref["ood"].dropna()) == {"far", "near"}
    pd.testing.assert_frame_equal(got, ref)

    for src in ("native", "npz"):
        argv = ["collapse", "--features", str(tmp_path / src), "--no-figures", "-q"]
        assert main([*argv, "--out", str(tmp_path / f"c_{src}")]) == 0
    ref, got = _frame(tmp_path / "c_native"), _frame(tmp_path / "c_npz")
    assert {"nc1", "nc5"} <= set(ref["metric"]) and "blk" in set(ref["layer"])
    pd.testing.assert_frame_equal(got, ref)


def test_from_arrays_matches_closed_form_and_saves_native(tmp_path):
    a = _arrays(1)
    fd = FeatureDir.from_arrays(
        train=(a["z_tr"], a["y_tr"]),
        test=a["z_te"],
        ood=a["z_ood"],
        W=a["w"],
        b=a["b"],
        layers={
            "train": {"blk": a["lay"]["train"]},
            "test": {"blk": a["lay"]["test"]},
            "ood": {k: {"blk": a["lay"][k]} for k in a["z_ood"]},
        },  # fmt: skip
        classes=["a", "b", "c", "d"],
    )
    np.testing.assert_array_equal(fd.train.logits, _ref_logits(a["z_tr"], a["w"], a["b"]))
    assert fd.train.logits.dtype == np.float32 and fd.test.labels is None
    np.testing.assert_array_equal(fd.train.labels, a["y_tr"])
    assert list(fd.ood) == ["far", "near"] and fd.meta["classes"] == ["a", "b", "c", "d"]
    assert fd.meta["layers"] == ["blk"] and fd.meta["epoch"] is None
    # float64 features keep float64 logits
    z64 = a["z_tr"].astype(np.float64)
    fd64 = FeatureDir.from_arrays(train=(z64, a["y_tr"]), test=z64, W=a["w"], b=a["b"])
    expect = z64 @ a["w"].astype(np.float64).T + a["b"].astype(np.float64)
    np.testing.assert_allclose(fd64.train.logits, expect, rtol=1e-12)
    # saved, it is a native directory with the same arrays
    fd.save(tmp_path / "f")
    back = load_feature_dir(tmp_path / "f")
    np.testing.assert_array_equal(back.ood["near"].layers["blk"], a["lay"]["near"])
    np.testing.assert_array_equal(back.head.weight, a["w"].astype(np.float64))


def _bad(a: dict, change: dict) -> dict:
    args = dict(
        train=(a["z_tr"], a["y_tr"]), test=(a["z_te"], a["y_te"]), ood=a["z_ood"], W=a["w"],
        b=a["b"],
    )  # fmt: skip
    return {**args, **change}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"W": np.zeros((C, D + 1))}, ShapeError, r"features of 'train' have 12 columns, but W"),
        ({"b": np.zeros(C + 1)}, ShapeError, r"b must be the head bias of shape \(4,\)"),
        ({"train": (np.zeros((5, D), np.float32), None)}, ConfigError, r"train must be a pair"),
        ({"train": np.zeros((5, D), np.float32)}, ConfigError, r"train must be a pair"),
        ({"test": np.zeros((0, D), np.float32)}, ShapeError, r"at least one row"),
        ({"ood": {"x": np.full((3, D), np.nan, np.float32)}}, ShapeError, r"OOD set 'x'.*NaN"),
        ({"ood": {"x": np.zeros((3, D), np.int64)}}, ShapeError, r"must be floating point"),
        ({"test": (np.zeros((3, D), np.float32), [0, 9, 1])}, ShapeError, r"0\.\.3"),
        ({"train": (np.zeros((3, D), np.float32), [0, 1, 2])}, ShapeError, r"miss 1 of the 4"),
        ({"train": (np.zeros((4, D), np.float32), [0, 1, 2.5, 3])}, ShapeError, r"integers"),
        ({"classes": ["a"]}, ConfigError, r"classes must name the 4 classes"),
        ({"ood": {"a/b": np.zeros((2, D)), "a:b": np.zeros((2, D))}}, ConfigError, "both"),
        ({"logits": {"test": np.zeros((40, C), np.float32)}}, ShapeError, r"not W z \+ b"),
        ({"logits": {"test": np.zeros((40, C + 1))}}, ShapeError, r"shape \(40, 4\)"),
        ({"layers": {"train": {"l": np.zeros((120, 3))}}}, ShapeError, r"same layers"),
        ({"layers": {"ood": {"nope": {}}}}, ConfigError, r"not in ood"),
    ],
)
def test_from_arrays_refuses_bad_input_in_one_line(change, error, match):
    a = _arrays()
    with pytest.raises(error, match=match) as info:
        FeatureDir.from_arrays(**_bad(a, change))
    assert "\n" not in str(info.value)


def _break_head(d):
    os.remove(d / "head.npz")


def _break_width(d):
    np.savez(d / "ood" / "far.npz", features=np.zeros((5, D + 2), np.float32))


def _break_labels(d):
    with np.load(d / "train.npz") as f:
        np.savez(d / "train.npz", features=f["features"])


def _break_key(d):
    with np.load(d / "test.npz") as f:
        np.savez(d / "test.npz", feature=f["features"])


@pytest.mark.parametrize(
    ("breaker", "match"),
    [
        (_break_head, r"has no head\.npz \(the final linear layer"),
        (_break_width, r"features of OOD set 'far' have 14 columns, but W \(4, 12\) expects 12"),
        (_break_labels, r"train\.npz' has no 'labels' array"),
        (_break_key, r"unknown key\(s\) \['feature'\]"),
    ],
)
@pytest.mark.parametrize("command", ["score", "collapse"])
def test_bad_npz_is_one_line_and_nothing_written(tmp_path, capsys, breaker, match, command):
    a = _arrays()
    _npz(a, tmp_path / "npz")
    breaker(tmp_path / "npz")
    out = tmp_path / "out"
    assert main([command, "--features", str(tmp_path / "npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pytest.importorskip("re").search(match, err[0]), err
    assert not out.exists()


def test_neither_layout_and_ood_given_twice(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"no extract\.json, no train\.npz"):
        load_feature_dir(tmp_path / "empty")
    a = _arrays()
    _npz(a, tmp_path / "npz")
    np.savez(tmp_path / "npz" / "ood_far.npz", features=a["z_ood"]["far"])
    with pytest.raises(DataError, match=r"OOD set 'far' is given twice"):
        load_feature_dir(tmp_path / "npz")


def test_save_link_shares_files_of_memory_maps(tmp_path):
    a = _arrays()
    _native(a, tmp_path / "src")
    fd = load_feature_dir(tmp_path / "src")
    fd.train = FeatureSet(
        fd.train.features, np.array(fd.train.logits), fd.train.labels, layers=fd.train.layers
    )  # logits now in memory: copied, not linked
    fd.save(tmp_path / "dst", link=True)
    src, dst = tmp_path / "src" / "train", tmp_path / "dst" / "train"
    assert os.path.samefile(src / "features.npy", dst / "features.npy")
    assert not os.path.samefile(src / "logits.npy", dst / "logits.npy")
    # a slice of a memory map is not the whole file: copied
    fd.test = FeatureSet(fd.test.features[1:], fd.test.logits[1:], fd.test.labels[1:])
    fd.save(tmp_path / "dst2", link=True)
    assert not os.path.samefile(
        tmp_path / "src/test/features.npy", tmp_path / "dst2/test/features.npy"
    )
    back = load_feature_dir(tmp_path / "dst2")
    np.testing.assert_array_equal(back.test.features, a["z_te"][1:])
    np.testing.assert_array_equal(load_feature_dir(tmp_path / "dst").train.features, a["z_tr"])
    # saving again over a linked directory keeps it valid
    fd2 = load_feature_dir(tmp_path / "dst")
    fd2.save(tmp_path / "dst", link=True)
    np.testing.assert_array_equal(load_feature_dir(tmp_path / "dst").train.features, a["z_tr"])
