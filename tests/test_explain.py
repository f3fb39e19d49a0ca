"""ncood.explain: every number against an independent computation (sklearn, numpy loops,
the detectors' own scores), and Integrated Gradients' completeness on a real model."""

from __future__ import annotations

import base64
import io
import logging
import sys

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ncood import explain as E
from ncood.collapse import collapse_metrics, nc5
from ncood.detectors import create_detector
from ncood.errors import ConfigError, ShapeError
from ncood.results import PENULTIMATE, Results
from ncood.types import FeatureDir, FeatureSet, LinearHead

C, D = 4, 12


def _fd(seed=0) -> FeatureDir:
    rng = np.random.default_rng(seed)
    mu = 3.0 * rng.standard_normal((C, D))
    head = LinearHead(mu + 0.3 * rng.standard_normal((C, D)), 0.1 * rng.standard_normal(C))
    scales = np.linspace(2.0, 0.2, D)  # an anisotropic spectrum
    proj = rng.standard_normal((D, 6))

    def split(n, name, shift=0.0, labelled=True, spread=1.0):
        y = np.arange(n) % C
        z = mu[y] + spread * rng.standard_normal((n, D)) * scales + shift
        z = np.maximum(z, 0.0).astype(np.float32)  # ReLU features; some zeros
        s1 = (z @ proj + rng.standard_normal((n, 6))).astype(np.float32)
        return FeatureSet(
            z, head.logits(z).astype(np.float32), y if labelled else None, name,
            layers={"stage1": s1},
        )  # fmt: skip

    return FeatureDir(
        train=split(300, "train"),
        test=split(120, "test"),
        ood={"far": split(70, "far", 3.0, False, 2.0), "near": split(50, "near", 0.5, False)},
        head=head,
        meta={"epoch": 4},
    )


DETS = {"msp": {}, "energy": {}, "vim": {"dim": 5}, "neco": {"dim": 3}}


@pytest.fixture(scope="module")
def fd():
    return _fd()


@pytest.fixture(scope="module")
def scores(fd):
    out = {}
    for name, p in DETS.items():
        det = create_detector(name, **p).fit(fd.train.features, fd.train.labels, fd.head)
        out[f"{name}/id"] = det.score(fd.test.features, fd.test.logits)
        for o, fs in fd.ood.items():
            out[f"{name}/{o}"] = det.score(fs.features, fs.logits)
    return out


@pytest.fixture(scope="module")
def res(fd, scores):
    return E.explain_features(fd, detectors=DETS, scores=scores, regime="r", seed=1, k=4)


def _vec(res, metric, n=None, **f):
    df = res.select(metric=metric, **f).sort_values("i")
    v = df["value"].to_numpy(float)
    if n is not None:
        assert len(v) == n
    return v


def test_rows_identified_and_unique(res):
    df = res.to_frame()
    assert (df["regime"] == "r").all() and (df["seed"] == 1).all() and (df["epoch"] == 4).all()
    keys = ["layer", "detector", "ood", "metric", "params", "i", "j"]
    assert not df.duplicated(keys).any()
    assert np.isfinite(df["value"]).all()
    # a Results round trip keeps every row
    assert len(Results(df)) == len(df)


def test_pca_spectrum_equals_sklearn(fd, res):
    z = np.asarray(fd.train.layers["stage1"], dtype=np.float64)
    pca = PCA().fit(z)
    got = _vec(res, "pc_variance_ratio", 6, layer="stage1", params={"basis": "pca"})
    np.testing.assert_allclose(got, pca.explained_variance_ratio_, rtol=1e-9, atol=1e-12)
    for name, fs in [(None, fd.test), *fd.ood.items()]:
        proj = pca.transform(np.asarray(fs.layers["stage1"], dtype=np.float64))
        msq = _vec(res, "pc_msq", 6, layer="stage1", params={"basis": "pca"}, ood=name)
        np.testing.assert_allclose(msq, (proj**2).mean(axis=0), rtol=1e-8)
    id_msq = (pca.transform(np.asarray(fd.test.layers["stage1"], np.float64)) ** 2).mean(0)
    far = (pca.transform(np.asarray(fd.ood["far"].layers["stage1"], np.float64)) ** 2).mean(0)
    ratio = _vec(res, "pc_msq_ratio", 6, layer="stage1", params={"basis": "pca"}, ood="far")
    np.testing.assert_allclose(ratio, id_msq / far, rtol=1e-8)


def test_neco_spectrum_and_premise_equal_scaler_pca_and_neco_score(fd, res, scores):
    ss = StandardScaler().fit(np.asarray(fd.train.features, np.float64))
    pca = PCA().fit(ss.transform(np.asarray(fd.train.features, np.float64)))
    p = {"basis": "neco"}
    got = _vec(res, "pc_variance_ratio", D, layer=PENULTIMATE, params=p)
    np.testing.assert_allclose(got, pca.explained_variance_ratio_, rtol=1e-7, atol=1e-12)
    assert res.value(metric="subspace_dim", detector="neco") == 3
    for name, fs in [(None, fd.test), *fd.ood.items()]:
        s = ss.transform(np.asarray(fs.features, np.float64))
        proj = pca.transform(s)
        np.testing.assert_allclose(
            _vec(res, "pc_msq", D, params=p, ood=name), (proj**2).mean(0), rtol=1e-6
        )
        frac = ((proj[:, :3] ** 2).sum(1) / (s**2).sum(1)).mean()
        got = res.value(metric="top_energy_fraction", detector="neco", ood=name)
        assert got == pytest.approx(frac, rel=1e-9)
        # NECO's score is the square root of the per-sample fraction
        key = "id" if name is None else name
        assert got == pytest.approx(np.mean(scores[f"neco/{key}"] ** 2), rel=1e-9)


def test_vim_residual_equals_vim_score(fd, res, scores):
    vim = create_detector("vim", dim=5).fit(fd.train.features, fd.train.labels, fd.head)
    from scipy.special import logsumexp

    assert res.value(metric="subspace_dim", detector="vim") == 5
    for name, fs in [(None, fd.test), *fd.ood.items()]:
        key = "id" if name is None else name
        f = np.asarray(fs.logits, np.float64)
        residual = (logsumexp(f, axis=1) - scores[f"vim/{key}"]) / vim.alpha_
        got = res.value(metric="residual_norm", detector="vim", ood=name)
        assert got == pytest.approx(residual.mean(), rel=1e-6)
        zc = np.asarray(fs.features, np.float64) - vim.origin_
        frac = (residual**2 / (zc**2).sum(1)).mean()
        got = res.value(metric="residual_energy_fraction", detector="vim", ood=name)
        assert got == pytest.approx(frac, rel=1e-6)
    # the vim basis spectrum: eigenvalues of (Z - u)^T (Z - u) / N, descending
    zc = np.asarray(fd.train.features, np.float64) - vim.origin_
    ev = np.sort(np.linalg.eigvalsh(zc.T @ zc / len(zc)))[::-1]
    got = _vec(res, "pc_variance_ratio", D, params={"basis": "vim"})
    np.testing.assert_allclose(got, ev / ev.sum(), rtol=1e-8, atol=1e-13)


def test_landing_rows_equal_brute_force(fd, res):
    means = np.stack(
        [np.asarray(fd.train.features, np.float64)[fd.train.labels == c].mean(0) for c in range(C)]
    )
    for name, fs in [(None, fd.test), *fd.ood.items()]:
        f = np.asarray(fs.logits, np.float64)
        pred = [int(np.argmax(r)) for r in f]
        frac = [pred.count(c) / len(pred) for c in range(C)]
        np.testing.assert_allclose(_vec(res, "pred_fraction", C, ood=name), frac)
        msp = softmax(f, axis=1).max(1)
        for c in range(C):
            sel = [m for m, p in zip(msp, pred, strict=True) if p == c]
            got = res.select(metric="pred_msp_mean", ood=name, i=c)["value"]
            if sel:
                assert float(got.iloc[0]) == pytest.approx(np.mean(sel), rel=1e-9)
            else:
                assert got.empty
        for q in E.SCORE_QUANTILES:
            v = res.value(metric="msp_quantile", ood=name, params={"q": q})
            assert v == pytest.approx(np.percentile(msp, 100 * q), rel=1e-9)
            v = res.value(metric="maxlogit_quantile", ood=name, params={"q": q})
            assert v == pytest.approx(np.percentile(f.max(1), 100 * q), rel=1e-9)
        if name is None:
            assert res.select(metric="nc5_class", ood=None).empty
            continue
        mu_o = np.asarray(fs.features, np.float64).mean(0)
        cos = [abs(m @ mu_o) / np.linalg.norm(m) / np.linalg.norm(mu_o) for m in means]
        per_class = _vec(res, "nc5_class", C, ood=name)
        np.testing.assert_allclose(per_class, cos, rtol=1e-9)
        assert per_class.mean() == pytest.approx(
            nc5(fd.train.features, fd.train.labels, fs.features), rel=1e-9
        )
        norms = [np.linalg.norm(m) for m in means]
        assert res.value(metric="ood_mean_norm_ratio", ood=name) == pytest.approx(
            np.linalg.norm(mu_o) / np.mean(norms), rel=1e-9
        )
        g = means.mean(0)
        cn = [np.linalg.norm(m - g) for m in means]
        assert res.value(metric="ood_mean_norm_ratio_centred", ood=name) == pytest.approx(
            np.linalg.norm(mu_o - g) / np.mean(cn), rel=1e-9
        )


def test_geometry_equals_brute_force_collapse_and_pca(fd, res):
    z = np.asarray(fd.train.features, np.float64)
    means = np.stack([z[fd.train.labels == c].mean(0) for c in range(C)])
    m = means - means.mean(0)
    for a in range(C):
        for b in range(a + 1, C):
            cos = m[a] @ m[b] / np.linalg.norm(m[a]) / np.linalg.norm(m[b])
            got = res.value(metric="gram_etf_deviation", i=a, j=b)
            assert got == pytest.approx(cos + 1 / (C - 1), abs=1e-12)
    gram = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in m] for x in m])
    etf = np.full((C, C), -1 / (C - 1)) + np.eye(C) * (1 + 1 / (C - 1))
    assert res.value(metric="gram_etf_distance") == pytest.approx(
        np.sqrt(((gram - etf) ** 2).sum() / (etf**2).sum()), rel=1e-9
    )
    cm = collapse_metrics(fd.train.features, fd.train.labels, fd.head)
    np.testing.assert_allclose(_vec(res, "nc3_alignment", C), cm["weight_mean_cosine"], rtol=1e-9)
    # the plane: PCA of the C centred means, up to the sign of each axis
    pca = PCA(n_components=2).fit(means)
    ref = pca.transform(means)
    got = np.stack(
        [_vec(res, f"plane_{a}", C, params={"kind": "class_mean"}) for a in ("x", "y")], 1
    )
    signs = np.sign((ref * got).sum(0))
    np.testing.assert_allclose(got, ref * signs, atol=1e-9)
    assert res.value(metric="plane_variance_fraction") == pytest.approx(
        pca.explained_variance_ratio_.sum(), rel=1e-9
    )
    # OOD means and sample points in the same plane
    for name, fs in fd.ood.items():
        mu = np.asarray(fs.features, np.float64).mean(0)[None]
        ref_o = pca.transform(mu)[0] * signs
        got_o = [
            res.value(metric=f"plane_{a}", ood=name, params={"kind": "ood_mean"}) for a in "xy"
        ]
        np.testing.assert_allclose(got_o, ref_o, atol=1e-9)
        pts = res.select(metric="plane_x", ood=name, params={"kind": "sample"})
        j = pts["j"].to_numpy(int)
        assert len(j) == len(fs) and (np.diff(j) > 0).all()  # n_points > set size: all of them
        xs = pca.transform(np.asarray(fs.features, np.float64)[j])[:, 0] * signs[0]
        np.testing.assert_allclose(pts["value"].to_numpy(float), xs, atol=1e-9)
    ids = res.select(metric="plane_x", ood=None, params={"kind": "sample"})
    assert (ids["i"].to_numpy(int) == fd.test.labels[ids["j"].to_numpy(int)]).all()


def test_unit_rows_equal_per_column_loops(fd, res):
    zid = np.asarray(fd.test.features, np.float64)
    for u in (0, 5, D - 1):
        for q in E.UNIT_QUANTILES:
            for name, fs in [(None, fd.test), *fd.ood.items()]:
                col = np.asarray(fs.features, np.float64)[:, u]
                got = res.value(metric="unit_quantile", i=u, ood=name, params={"q": q})
                assert got == pytest.approx(np.percentile(col, 100 * q), rel=1e-9, abs=1e-12)
        thr = np.percentile(zid[:, u], 99)
        for name, fs in fd.ood.items():
            col = np.asarray(fs.features, np.float64)[:, u]
            got = res.value(metric="unit_exceed_fraction", i=u, ood=name)
            assert got == pytest.approx(sum(v > thr for v in col) / len(col))
            shift = (col.mean() - zid[:, u].mean()) / zid[:, u].std()
            assert res.value(metric="unit_shift", i=u, ood=name) == pytest.approx(shift, rel=1e-9)


def test_unit_shift_leaves_out_units_constant_on_id():
    z = np.ones((20, 3))
    z[:, 1] = np.arange(20)
    test = FeatureSet(z, np.zeros((20, 2)), np.zeros(20, dtype=int), "t")
    ood = FeatureSet(z + 1, np.zeros((20, 2)), None, "o")
    rows = Results(E.unit_rows(test, {"o": ood}))
    assert sorted(rows.select(metric="unit_shift")["i"].tolist()) == [1]
    assert rows.value(metric="unit_exceed_fraction", i=0) == 1.0  # 2 > the ID 99th pct 1


def test_example_rows_are_the_top_scores(fd, res, scores):
    for det in DETS:
        for name in [None, *fd.ood]:
            s = scores[f"{det}/{'id' if name is None else name}"]
            df = res.select(metric="example_score", detector=det, ood=name).sort_values("i")
            kind = E.ID_MOST_OOD if name is None else E.OOD_MOST_ID
            assert set(df["params"]) == {f'{{"kind": "{kind}"}}'}
            ranked = sorted(range(len(s)), key=lambda k: (s[k] if name is None else -s[k], k))
            assert df["j"].tolist() == ranked[:4]
            np.testing.assert_array_equal(df["value"].to_numpy(float), s[ranked[:4]])


def test_example_rows_reject_bad_keys():
    with pytest.raises(ConfigError, match="<detector>/<split>"):
        E.example_rows({"msp": np.zeros(3)})


def test_explain_without_labels_is_a_clear_error(fd):
    bad = FeatureDir(
        FeatureSet(fd.train.features, fd.train.logits, None, "train"), fd.test, fd.ood, fd.head
    )
    with pytest.raises(ShapeError, match="no labels"):
        E.explain_features(bad)


# ----------------------------------------------------------------------- attributions
@pytest.fixture(scope="module")
def real():
    """Random-init resnet_narrow (BN statistics and biases randomised, so the network is
    not positively homogeneous) on 64 real Fashion-MNIST test images."""
    from ncood.data import load_images
    from ncood.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_narrow", in_channels=1, num_classes=10)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.3)
    model.eval()
    arrays = load_images("fashion_mnist", "test", n=64, seed=0, download=False)
    x = (arrays.images.float() / 255 - 0.286) / 0.353
    with torch.no_grad():
        z = model.forward_features(x).double().numpy()
    neco = create_detector("neco", dim=8).fit(z, arrays.labels.numpy(), model.get_head())
    return model, x, neco


def _riemann(fn, x, base, steps=400):
    """Brute-force IG: midpoint rule of the gradient along the straight path."""
    total = torch.zeros_like(x)
    for k in range(steps):
        a = (k + 0.5) / steps
        p = (base + a * (x - base)).requires_grad_()
        (g,) = torch.autograd.grad(fn(p).sum(), p)
        total += g
    return (x - base) * total / steps


def _fn(real, which):
    model, _, neco = real
    return E.energy_score_fn(model) if which == "energy" else E.neco_score_fn(model, neco)


@pytest.mark.parametrize("which", ["energy", "neco"])
def test_integrated_gradients_are_complete(real, which):
    _, x, _ = real
    fn = _fn(real, which)
    xs = x[:2]
    base = x[3:5].flip(-1) * 0.5  # a non-zero baseline: the path crosses ReLU kinks
    attr, delta = E.integrated_gradients(fn, xs, baseline=base, n_steps=128)
    assert attr.shape == xs.shape and delta.shape == (2,)
    with torch.no_grad():
        gap = fn(xs) - fn(base)
    # completeness: attributions sum to score(x) - score(baseline) (quadrature error
    # measured at 0.2-1.6% with 128 steps on this model; 2-7% with 32)
    err = (attr.sum(dim=(1, 2, 3)) - gap).abs()
    assert (err <= 0.03 * gap.abs() + 1e-5).all(), (err, gap)
    torch.testing.assert_close(delta.float().abs(), err.float(), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["energy", "neco"])
def test_integrated_gradients_equal_a_brute_force_path_integral(real, which):
    _, x, _ = real
    fn = _fn(real, which)
    xs, base = x[:1], x[3:4].flip(-1) * 0.5
    attr, _ = E.integrated_gradients(fn, xs, baseline=base, n_steps=128)
    steps = 256  # midpoint rule of the gradient along the straight path, one batch
    a = (torch.arange(steps, dtype=xs.dtype) + 0.5) / steps
    path = (base + a[:, None, None, None] * (xs - base)).requires_grad_()
    (g,) = torch.autograd.grad(fn(path).sum(), path)
    ref = (xs - base) * g.mean(dim=0, keepdim=True)
    assert (attr - ref).abs().max() <= 0.05 * ref.abs().max()


def test_neco_score_fn_equals_neco_detector(real):
    model, x, neco = real
    with torch.no_grad():
        got = E.neco_score_fn(model, neco)(x).double().numpy()
        z = model.forward_features(x).double().numpy()
        energy = E.energy_score_fn(model)(x).double().numpy()
        f = model.forward_head(model.forward_features(x)).double().numpy()
    np.testing.assert_allclose(got, neco.score(z, f), rtol=1e-5)
    ref = create_detector("energy").fit(None, None, model.get_head()).score(None, f)
    np.testing.assert_allclose(energy, ref, rtol=1e-5)


def test_missing_captum_is_a_clear_error(real, monkeypatch):
    model, x, _ = real
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ConfigError, match=r"captum.*ncood\[explain\]"):
        E.integrated_gradients(E.energy_score_fn(model), x[:1])


def test_bad_input_and_unfitted_neco(real):
    model, x, _ = real
    with pytest.raises(ShapeError, match="4-D"):
        E.integrated_gradients(E.energy_score_fn(model), x[0])
    with pytest.raises(ConfigError, match="fitted NECO"):
        E.neco_score_fn(model, create_detector("neco"))


def test_example_images_reread_the_extracted_rows(real):
    from ncood.data import load_images

    model, _, _ = real
    arrays = load_images("fashion_mnist", "test", n=64, seed=0, download=False)
    fs = FeatureSet(
        np.zeros((64, 2)), np.zeros((64, 3)), None, "fmnist/test",
        meta={"dataset": "fashion_mnist", "split": "test", "subset": {"n": 64, "seed": 0}},
    )  # fmt: skip
    got = E.example_images(fs, [5, 0, 63], (1, 28, 28))
    assert torch.equal(got, arrays.images[[5, 0, 63]])
    short = FeatureSet(np.zeros((10, 2)), np.zeros((10, 3)), None, "x", meta=fs.meta)
    with pytest.raises(ShapeError, match="re-run the extraction"):
        E.example_images(short, [0], (1, 28, 28))


def test_attributions_of_the_examples_end_to_end(real):
    """explain_features + explain_attributions on a real model's features: the saved
    images are the examples' images, one map per attributed example, gaps as recomputed."""
    from ncood.data import load_images

    model, _, _ = real

    def fs_of(name, n, labelled):
        a = load_images(name, "test", n=n, seed=0, shape=(1, 28, 28), download=False)
        x = (a.images.float() / 255 - 0.286) / 0.353
        with torch.no_grad():
            z = model.forward_features(x)
            f = model.forward_head(z)
        meta = {"dataset": name, "split": "test", "subset": {"n": n, "seed": 0}}
        return FeatureSet(
            z.numpy(), f.numpy(), a.labels.numpy() if labelled else None, name, meta=meta
        ), a

    train, _ = fs_of("fashion_mnist", 64, True)
    digits, digit_images = fs_of("digits", 40, False)
    fd = FeatureDir(train, train, {"digits": digits}, model.get_head(), meta={"epoch": 2})
    dets = {"energy": {}, "neco": {"dim": 8}}
    neco = create_detector("neco", dim=8).fit(train.features, train.labels, fd.head)
    scores = {
        "energy/id": create_detector("energy").score(None, train.logits),
        "energy/digits": create_detector("energy").score(None, digits.logits),
        "neco/id": neco.score(train.features, None),
        "neco/digits": neco.score(digits.features, None),
    }
    res = E.explain_features(fd, detectors=dets, scores=scores, k=3, regime="r")

    def tf(im):
        return (im.float() / 255 - 0.286) / 0.353

    rows, arrays = E.explain_attributions(
        model, fd, res, neco=neco, transform=tf, shape=(1, 28, 28), ig_k=1, n_steps=16,
        regime="r",
    )  # fmt: skip
    ex = res.select(metric="example_score", ood="digits")
    idx = sorted(set(ex["j"].astype(int)))
    np.testing.assert_array_equal(arrays["digits/index"], idx)
    np.testing.assert_array_equal(arrays["digits/images"], digit_images.images[idx].numpy())
    got = Results(rows)
    for det in ("energy", "neco"):
        top = int(ex[(ex["detector"] == det) & (ex["i"] == 0)]["j"].iloc[0])
        assert arrays[f"ig/{det}/digits/index"].tolist() == [top]
        assert arrays[f"ig/{det}/digits"].shape == (1, 28, 28)
        fn = E.energy_score_fn(model) if det == "energy" else E.neco_score_fn(model, neco)
        x = tf(digit_images.images[[top]])
        with torch.no_grad():
            gap = float(fn(x) - fn(torch.zeros_like(x)))
        # float32 network, examples and baselines in one batch there: rel 1e-4
        assert got.value(metric="ig_score_gap", detector=det, ood="digits") == pytest.approx(
            gap, rel=1e-4
        )
        err = got.value(metric="ig_completeness_error", detector=det, ood="digits")
        assert err == pytest.approx(
            abs(arrays[f"ig/{det}/digits"].sum() - gap) / abs(gap), rel=1e-2, abs=1e-4
        )
    # the parameters are trainable again afterwards
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------- report part
def test_figures_and_findings_quote_the_rows(fd, res):
    from ncood.report import explain_figures as X

    figs = [
        X.spectrum_figure(res, "r"),
        X.layer_spectrum_figure(res, "r"),
        X.prediction_figure(res, "r", None),
        X.confidence_figure(res, "r"),
        X.gram_figure(res, "r", None),
        X.plane_figure(res, "r", list("abcd")),
        X.units_figure(res, "r"),
    ]
    assert all(f is not None for f in figs)
    index = np.asarray(sorted(set(res.select(metric="example_score", ood="far")["j"])))
    arrays = {"r/far/images": np.zeros((len(index), 1, 8, 8), np.uint8), "r/far/index": index}
    assert X.example_grid(res, "r", arrays, "far") is not None
    assert X.example_grid(res, "r", arrays, "near") is None  # no images saved
    items = X.explain_findings(res, "r", ["a", "b", "c", "d"])
    pf = res.select(metric="pred_fraction", ood="far").sort_values("value").iloc[-1]
    absorb = [t for t in items if t.startswith("far (r):") and "absorbs" in t][0]
    assert f"class {int(pf['i'])} ({'abcd'[int(pf['i'])]}) absorbs {100 * pf['value']:.1f}%" in (
        absorb
    )
    neco_id = res.value(metric="top_energy_fraction", detector="neco", ood=None)
    neco_far = res.value(metric="top_energy_fraction", detector="neco", ood="far")
    verdict = "holds" if neco_id > neco_far else "does not hold"
    assert any(t.startswith(f"NECO's premise {verdict} on far") for t in items)
    assert any(f"{100 * neco_far:.1f}% for far" in t for t in items)


def test_findings_say_a_premise_fails_when_the_numbers_say_so():
    from ncood.report.explain_figures import explain_findings
    from ncood.results import row

    k = {"regime": "r", "epoch": 1, "layer": PENULTIMATE}
    rows = [
        row("pred_fraction", 1.0, ood="o", i=0, **k),
        row("pred_msp_mean", 0.5, ood="o", i=0, **k),
        row("top_energy_fraction", 0.6, detector="neco", **k),
        row("top_energy_fraction", 0.7, detector="neco", ood="o", **k),
        row("subspace_dim", 3, detector="neco", **k),
        row("residual_energy_fraction", 0.2, detector="vim", **k),
        row("residual_energy_fraction", 0.1, detector="vim", ood="o", **k),
        row("residual_norm", 1.0, detector="vim", **k),
        row("residual_norm", 0.5, detector="vim", ood="o", **k),
        row("subspace_dim", 5, detector="vim", **k),
    ]
    items = explain_findings(Results(rows), "r")
    assert any(t.startswith("NECO's premise does not hold on o") and "60.0%" in t for t in items)
    assert any(t.startswith("ViM's premise does not hold on o") and "10.00%" in t for t in items)
    assert not any("holds on" in t and "not" not in t for t in items)


@pytest.mark.slow
def test_explain_network_on_a_trained_checkpoint(fmnist_run, monkeypatch):
    """The pipeline's call: a trained resnet_narrow's checkpoint and extracted features."""
    from ncood.analysis import analyse

    fd = FeatureDir(fmnist_run.train, fmnist_run.test, fmnist_run.ood, fmnist_run.head,
                    meta={"epoch": 3})  # fmt: skip
    dets = {"energy": {}, "neco": {}, "vim": {}}
    scores = {}
    analyse(fd, detectors=dets, collapse=False, layers=False, scores_out=scores)
    res, arrays = E.explain_network(
        fd, fmnist_run.checkpoint, detectors=dets, scores=scores, regime="standard", seed=0
    )
    assert res.meta["notes"] == []
    assert set(res.values("detector", metric="ig_completeness_error")) == {"energy", "neco"}
    assert res.select(metric="ig_completeness_error")["value"].max() < 0.5
    assert {"id/images", "digits/images", "ig/energy/digits", "ig/neco/id"} <= set(arrays)
    assert (res.to_frame()["epoch"] == 3).all()
    # without captum: the feature analyses, no attributions, a note that says why
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    res2, arrays2 = E.explain_network(fd, fmnist_run.checkpoint, detectors=dets, scores=scores)
    assert arrays2 == {} and res2.select(metric="ig_score_gap").empty
    assert "captum" in res2.meta["notes"][0]["note"]
    assert len(res2.select(metric="pred_fraction"))


def test_attributions_of_a_users_model_through_the_adapter(real):
    """A plain nn.Module (no ncood interface) wrapped by ModelAdapter: IG of its energy is
    complete and the NECO score function reads the adapter's penultimate features."""
    from ncood.models.adapters import wrap_model

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10),
    ).eval()  # fmt: skip
    model = wrap_model(net, input_size=(1, 28, 28))
    _, x, _ = real
    with torch.no_grad():
        z = model.forward_features(x).double().numpy()
        f = net(x).double().numpy()
    assert z.shape == (64, 16)
    head = model.get_head()
    np.testing.assert_allclose(head.logits(z), f, rtol=1e-4, atol=1e-5)
    neco = create_detector("neco", dim=4).fit(z, f.argmax(1), head)
    with torch.no_grad():
        np.testing.assert_allclose(
            E.neco_score_fn(model, neco)(x).double().numpy(), neco.score(z, None), rtol=1e-5
        )
    fn = E.energy_score_fn(model)
    attr, _ = E.integrated_gradients(fn, x[:2], n_steps=128)
    with torch.no_grad():
        gap = fn(x[:2]) - fn(torch.zeros_like(x[:2]))
    assert ((attr.sum(dim=(1, 2, 3)) - gap).abs() <= 0.03 * gap.abs() + 1e-5).all()


def test_regime_findings_quote_each_regimes_margin_and_auroc():
    from ncood.report.explain_figures import regime_findings
    from ncood.results import row

    rows = []
    for reg, (a, b, auc) in {"s": (0.9, 0.7, 0.91), "m": (0.9, 0.85, 0.79)}.items():
        k = {"regime": reg, "epoch": 5, "layer": PENULTIMATE}
        rows += [
            row("pred_fraction", 1.0, ood="digits", i=0, **k),
            row("top_energy_fraction", a, detector="neco", **k),
            row("top_energy_fraction", b, detector="neco", ood="digits", **k),
            row("auroc", auc, detector="neco", ood="digits", **k),
        ]
    items = regime_findings(Results(rows), ["s", "m"])
    assert items == [
        "NECO on digits (top-subspace energy share, ID minus OOD): s +20.00 points, AUROC "
        "91.00%; m +5.00 points, AUROC 79.00%."
    ]
    assert regime_findings(Results(rows), ["s"]) == []


# ----------------------------------------------------------------------- integration
def test_write_report_shows_the_section_with_the_saved_arrays(fd, res, tmp_path):
    """write_report: the section from the rows, its thumbnails from DIR/explain.npz."""
    from ncood.io import atomic_open
    from ncood.report import SECTION_IDS, write_report

    assert "explain" in SECTION_IDS
    index = np.asarray(sorted(set(res.select(metric="example_score", ood="far")["j"])))
    with atomic_open(tmp_path / "explain.npz", "wb") as fh:
        np.savez(fh, **{"r/far/images": np.zeros((len(index), 1, 8, 8), np.uint8),
                        "r/far/index": index})  # fmt: skip
    paths = write_report(res, tmp_path)
    html = paths["html"].read_text()
    assert "Why the detectors behave as they do" in html
    written = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"explain_r_spectrum.png", "explain_r_examples_far.jpg"} <= written
    # image grids are embedded as JPEG, plots as PNG; the page stays self-contained
    jpg = (tmp_path / "figures" / "explain_r_examples_far.jpg").read_bytes()
    assert jpg[:3] == b"\xff\xd8\xff"
    assert "data:image/jpeg;base64," + base64.b64encode(jpg).decode() in html
    png = (tmp_path / "figures" / "explain_r_spectrum.png").read_bytes()
    assert "data:image/png;base64," + base64.b64encode(png).decode() in html
    pf = res.select(metric="pred_fraction", ood="far").sort_values("value").iloc[-1]
    assert f"absorbs {100 * pf['value']:.1f}% of the samples" in html
    # a run without explanations: one note, no figure
    bare = Results(res.select(metric="pc_msq"))
    html = write_report(bare, tmp_path / "bare")["html"].read_text()
    assert "The explanations were not computed in this run" in html


def test_write_report_logs_the_section_seconds(fd, res, tmp_path, caplog):
    from ncood.report import write_report

    with caplog.at_level(logging.INFO, logger="ncood.report.explain_figures"):
        write_report(res, tmp_path)
    msg = [r.getMessage() for r in caplog.records if "report section 'explain'" in r.message]
    assert len(msg) == 1 and msg[0].endswith("kB") and " s, " in msg[0]


# ----------------------------------------------------------------------- report size
def _decoded(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int64)


def _settled_png(fig) -> bytes:
    """matplotlib's PNG of ``fig`` as every later draw gives it (a constrained layout
    moves by a pixel or two between the first draw and the second)."""
    from ncood.report import figures as F

    F.png(fig)
    return F.png(fig)


def test_encode_plots_as_palette_png_close_to_the_rgb_original():
    """Plots: a palette PNG close to matplotlib's own RGB PNG, pixel by pixel, and smaller
    than it."""
    from matplotlib.figure import Figure

    from ncood.report import explain_figures as X
    from ncood.report import figures as F

    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for k in range(8):
        ax.plot(np.cumsum(rng.standard_normal(200)), color=F.PALETTE[k % len(F.PALETTE)])
    ax.imshow(rng.standard_normal((20, 20)), cmap="RdBu_r", extent=(0, 60, -10, 10))
    ref = _settled_png(fig)
    data, ext = X.encode(fig)
    assert ext == "png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert _decoded(data).shape == _decoded(ref).shape
    err = np.abs(_decoded(data) - _decoded(ref))
    # a 400-colour heatmap beside 8 lines: worst pixel 19/255 (the default run's plots:
    # 15/255), 1.7 grey levels on average here (the heatmap fills most of the plot)
    assert err.max() <= 24 and err.mean() < 3
    assert len(data) < len(ref)


def test_encode_photos_as_jpeg_grey_when_grey():
    from PIL import Image

    from ncood.report import explain_figures as X

    res = Results(
        [
            {"metric": "example_score", "value": float(v), "regime": "r", "detector": d,
             "ood": "o", "i": i, "j": 5 * k + i, "layer": PENULTIMATE}
            for k, d in enumerate(("msp", "energy")) for i, v in enumerate((3.0, 2.0, 1.0))
        ]
    )  # fmt: skip
    rng = np.random.default_rng(1)
    index = np.arange(10)
    grey = rng.integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)  # noise: PNG's worst case
    fig = X.example_grid(res, "r", {"r/o/images": grey, "r/o/index": index}, "o")
    ref = _settled_png(fig)
    data, ext = X.encode(fig, photo=True)
    assert ext == "jpg" and Image.open(io.BytesIO(data)).mode == "L"
    assert len(data) < len(ref) / 2
    # real thumbnails stay what they were: a few grey levels from the PNG on average
    from ncood.data import load_images

    real = load_images("fashion_mnist", "test", n=10, seed=0, download=False).images.numpy()
    fig = X.example_grid(res, "r", {"r/o/images": real, "r/o/index": index}, "o")
    ref = _settled_png(fig)
    data, _ = X.encode(fig, photo=True)
    assert np.abs(_decoded(data) - _decoded(ref)).mean() < 3
    colour = rng.integers(0, 256, (10, 3, 28, 28), dtype=np.uint8)
    fig = X.example_grid(res, "r", {"r/o/images": colour, "r/o/index": index}, "o")
    data, _ = X.encode(fig, photo=True)
    assert Image.open(io.BytesIO(data)).mode == "RGB"


def test_example_grid_places_each_ranked_image_under_its_score():
    """The mosaic: tile (detector row, rank column) shows the image of that example row."""
    from ncood.report import explain_figures as X

    res = Results(
        [
            {"metric": "example_score", "value": 10.0 - i, "regime": "r", "detector": d,
             "ood": "o", "i": i, "j": j, "layer": PENULTIMATE}
            for d, js in (("msp", (4, 1, 7)), ("neco", (2, 4))) for i, j in enumerate(js)
        ]
    )  # fmt: skip
    index = np.array([1, 2, 4, 7])
    images = np.stack([np.full((1, 8, 8), 50 * k, np.uint8) for k in range(1, 5)])
    fig = X.example_grid(res, "r", {"r/o/images": images, "r/o/index": index}, "o")
    canvas = fig.axes[0].get_images()[0].get_array()
    h = w = 8
    gap, band = max(1, w // 14), max(4, (h * 2) // 5)
    for r, js in enumerate(((4, 1, 7), (2, 4))):
        for c in range(3):
            tile = canvas[r * (band + h + gap) + band :][:h, c * (w + gap) :][:, :w]
            if c < len(js):
                want = 50 * (int(np.flatnonzero(index == js[c])[0]) + 1) / 255
                np.testing.assert_allclose(tile, want)
            else:
                np.testing.assert_allclose(tile, 1.0)  # blank (white) where no example
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["10", "9", "8", "10", "9"]
