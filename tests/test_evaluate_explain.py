"""ncood.evaluate(..., explain=True): the explanations of a model the user brings.

A random-init torchvision resnet18(num_classes=10) on real Fashion-MNIST as 3 x 64 x 64.
Independent references: the model's own forward pass (energy = logsumexp of ``net(x)``), the images
re-read with :func:`ncood.data.load_images` and the transform of the extraction, and
``explain.npz``'s maps summed by numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from ncood import explain as E
from ncood.data import load_images
from ncood.data.streams import EvalTransform
from ncood.errors import ShapeError
from ncood.results import Results

SIZE = 64
N_TEST, N_OOD = 60, 40


def _resnet18() -> torch.nn.Module:
    """Random init; the head's weights x30 and a random bias: a random head gives
    near-uniform softmax (energy gaps ~1e-3, where a relative test means nothing).

    At initialisation BN (eval) is linear without offset, so the features are positively
    homogeneous in the input and Integrated Gradients from the zero baseline is exact up
    to quadrature of a smooth function: the completeness check then tests that the saved
    maps are the attributions of this network's scores on the saved images with the
    extraction's normalisation. (With randomised BN statistics the path crosses ReLU kinks:
    48 steps gave 3-22% on four test images, 160 steps 1-3%; the rows record the error.)
    """
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.fc.weight.data.mul_(30.0)
    net.fc.bias.data.normal_(0, 1.0)
    return net.eval()


class _Shuffled(torch.utils.data.Dataset):
    """Real digits as uint8 28 x 28 items; served by a shuffling DataLoader, a second
    pass yields them in another order."""

    def __init__(self) -> None:
        self.images = load_images("digits", "test", n=N_OOD, seed=3, download=False).images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], -1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One evaluate call (about 2 minutes on 2 loaded cores, most of it Integrated
    Gradients of resnet18: 8 examples x 48 steps; the tests using it are slow)."""
    import ncood

    out = tmp_path_factory.mktemp("evaluate_explain")
    net = _resnet18()
    shuffled = torch.utils.data.DataLoader(
        _Shuffled(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    res = ncood.evaluate(
        net,
        train="fashion_mnist",
        test="fashion_mnist",
        ood={"digits": "digits", "shuffled": shuffled},
        detectors=["msp", "energy", "neco"],
        layers=["layer3"],
        input_size=SIZE,
        max_train_samples=200,
        max_test_samples=N_TEST,
        max_ood_samples=N_OOD,
        out=out,
        num_workers=0,
        explain=True,
    )
    return net, res, out


@pytest.mark.slow
def test_explanation_rows_of_every_analysis(run):
    _, res, _ = run
    for metric in (
        "pc_variance_ratio", "pc_msq_ratio", "top_energy_fraction", "residual_norm",
        "pred_fraction", "nc5_class", "gram_etf_distance", "plane_x", "unit_exceed_fraction",
        "example_score", "ig_score_gap", "ig_completeness_error",
    ):  # fmt: skip
        assert len(res.select(metric=metric)), metric
    assert res.select(metric="pc_variance_ratio", layer="layer3")["value"].sum() == (
        pytest.approx(1.0)
    )
    assert set(res.values("ood", metric="pred_fraction")) == {"digits", "shuffled"}
    # rows of the user's network: no regime (the report calls it "network")
    assert res.to_frame()["regime"].isna().all()


@pytest.mark.slow
def test_example_images_are_the_streamed_rows(run):
    """The saved images are the extracted test / OOD rows, taken by index from the streams."""
    _, res, out = run
    z = np.load(out / "explain.npz")
    tf = EvalTransform(SIZE, SIZE, 3)
    for split, name, n in (("id", "fashion_mnist", N_TEST), ("digits", "digits", N_OOD)):
        idx = z[f"network/{split}/index"]
        ex = res.select(metric="example_score", ood=None if split == "id" else split)
        assert idx.tolist() == sorted(set(ex["j"].astype(int)))
        shape = (3, SIZE, SIZE)  # as the stream asks load_images for them
        ref = load_images(name, "test", n=n, seed=0, shape=shape, download=False).images
        ref = tf.resize_crop(ref)[idx].numpy()
        got = z[f"network/{split}/images"]
        assert got.shape[0] == len(idx) and got.shape[2:] == (SIZE, SIZE)
        for c in range(got.shape[1]):  # grey images: every channel the same
            np.testing.assert_array_equal(got[:, c], ref[:, min(c, ref.shape[1] - 1)])


@pytest.mark.slow
def test_integrated_gradients_are_complete_for_the_users_model(run):
    """Each saved map sums to score(x) - score(0) of the user's own network, within the
    tolerance of test_explain's completeness test (3% + 1e-5)."""
    net, res, out = run
    z = np.load(out / "explain.npz")
    tf = EvalTransform(SIZE, SIZE, 3)
    neco = E.fit_subspace(_fd(out), {"neco": {}})[0]
    fns = {
        "energy": lambda x: torch.logsumexp(net(x), dim=1),
        "neco": E.neco_score_fn(E.wrap_model(net), neco),
    }
    checked = 0
    for det, fn in fns.items():
        for split in ("id", "digits"):
            maps, idx = z[f"network/ig/{det}/{split}"], z[f"network/ig/{det}/{split}/index"]
            images = dict(
                zip(z[f"network/{split}/index"].tolist(), z[f"network/{split}/images"], strict=True)
            )
            x = tf.normalize(torch.as_tensor(np.stack([images[j] for j in idx.tolist()])))
            with torch.no_grad():
                gap = (fn(x) - fn(torch.zeros_like(x))).double().numpy()
            total = maps.astype(np.float64).sum(axis=(1, 2))
            assert (np.abs(total - gap) <= 0.03 * np.abs(gap) + 1e-5).all(), (det, split)
            ood = None if split == "id" else split
            rows = res.select(metric="ig_score_gap", detector=det, ood=ood).sort_values("j")
            order = np.argsort(idx)
            np.testing.assert_allclose(rows["value"].to_numpy(float), gap[order], rtol=1e-4)
            # the recorded completeness error is the one recomputed here
            err = res.select(metric="ig_completeness_error", detector=det, ood=ood)
            err = err.sort_values("j")["value"].to_numpy(float)
            want = (np.abs(total - gap) / np.abs(gap))[order]
            np.testing.assert_allclose(err, want, rtol=0.05, atol=1e-5)
            checked += len(idx)
    assert checked == 8  # 2 scores x 2 splits x 2 examples


def _fd(out):
    from ncood.types import load_feature_dir

    return load_feature_dir(out / "features")


@pytest.mark.slow
def test_a_shuffling_source_gets_a_note_not_wrong_images(run):
    _, res, out = run
    z = np.load(out / "explain.npz")
    assert not [k for k in z.files if "shuffled" in k]
    notes = [n["note"] for n in res.meta["notes"]]
    assert any("'shuffled' left out" in t and "shuffling DataLoader" in t for t in notes)
    assert res.select(metric="ig_score_gap", ood="shuffled").empty
    assert len(res.select(metric="example_score", ood="shuffled"))  # its rows stay


@pytest.mark.slow
def test_the_report_shows_the_section_for_the_output_dir(run):
    from ncood.report import write_report

    _, _, out = run
    paths = write_report(Results.load(out), out)
    html = paths["html"].read_text()
    section = html.split('id="explain"')[1].split('id="findings"')[0]
    assert "Regime: network" in section and "not computed" not in section
    assert "data:image/jpeg;base64," in section  # the example grids and IG overlays
    assert {"explain_network_ig.jpg", "explain_network_examples_digits.jpg"} <= {
        p.name for p in (out / "figures").iterdir()
    }
    assert "Integrated Gradients (network, 48 steps)" in section


def test_explain_is_off_by_default_and_nothing_is_written(tmp_path):
    import ncood

    res = ncood.evaluate(
        torchvision.models.resnet18(num_classes=10),
        train="fashion_mnist",
        test="fashion_mnist",
        ood=["digits"],
        detectors=["msp"],
        layers=[],
        input_size=32,
        max_train_samples=40,
        max_test_samples=20,
        max_ood_samples=20,
        out=tmp_path / "o",
        num_workers=0,
    )
    assert res.select(metric="pred_fraction").empty
    assert not (tmp_path / "o" / "explain.npz").exists()


def test_stream_rows_reads_the_indexed_rows_and_stops_early():
    batches = [(torch.arange(k, k + 4).view(4, 1, 1, 1), torch.zeros(4)) for k in (0, 4, 8)]
    seen = []

    def stream():
        for b in batches:
            seen.append(int(b[0][0]))
            yield b

    class S:
        name = "s"

        def __iter__(self):
            return stream()

    got = E.stream_rows(S(), [5, 1, 5])
    assert got.flatten().tolist() == [1, 5] and seen == [0, 4]  # the third batch unread
    with pytest.raises(ShapeError, match="yielded 12 images.*row 12"):
        E.stream_rows(S(), [12])


def test_a_small_users_model_end_to_end(tmp_path):
    """The same path quickly: a small nn.Module, explain rows, the saved images are the
    streamed rows, and every saved map sums to its score gap (3% + 1e-5)."""
    import ncood

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()  # fmt: skip
    res = ncood.evaluate(
        net, train="fashion_mnist", test="fashion_mnist", ood=["digits"],
        detectors=["energy", "neco"], layers=[], input_size=16, max_train_samples=100,
        max_test_samples=30, max_ood_samples=30, out=tmp_path / "o", num_workers=0,
        explain=True,
    )  # fmt: skip
    assert len(res.select(metric="pred_fraction", ood="digits")) == 10
    assert res.meta["notes"] == []
    z = np.load(tmp_path / "o" / "explain.npz")
    tf = EvalTransform(16, 16, 3)
    ref = load_images("digits", "test", n=30, seed=0, shape=(3, 16, 16), download=False)
    idx = z["network/digits/index"]
    np.testing.assert_array_equal(z["network/digits/images"], ref.images[idx].numpy())
    images = dict(zip(idx.tolist(), z["network/digits/images"], strict=True))
    ig_idx = z["network/ig/energy/digits/index"]
    x = tf.normalize(torch.as_tensor(np.stack([images[j] for j in ig_idx.tolist()])))
    with torch.no_grad():
        gap = (torch.logsumexp(net(x), 1) - torch.logsumexp(net(torch.zeros_like(x)), 1)).double()
    total = z["network/ig/energy/digits"].astype(np.float64).sum(axis=(1, 2))
    assert (np.abs(total - gap.numpy()) <= 0.03 * np.abs(gap.numpy()) + 1e-5).all()
    assert {"network/ig/neco/id", "network/ig/neco/digits"} <= set(z.files)
    assert not net.training and all(p.requires_grad for p in net.parameters())
