"""Tests of ncood.report: files, tables vs the Results, findings, HTML, Markdown, browser."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ncood.report import SECTION_IDS, findings, terminal_summary, write_report
from ncood.report import tables as T
from ncood.results import COLUMNS, PENULTIMATE, Results
from ncood.results import row as result_row
from report_fixtures import (
    CLASSES,
    DETECTORS,
    GRIDS,
    LAST,
    LAYERS,
    OOD_SETS,
    REGIMES,
    SNAPSHOTS,
    VAL_OOD,
    ZOO,
    collapse_reference,
    fpr_at_95_tpr,
    make_results,
    nc5_reference,
    ood_metrics_reference,
    with_seeds,
    without,
)

EXPECTED_FIGURES = {
    "training_curves.png",
    "regime_comparison.png",
    *(f"{kind}_{r}.png" for kind in ("scores", "roc", "epochs") for r in REGIMES),
    *(
        f"collapse_{r}_{k}.png"
        for r in REGIMES
        for k in ("variance", "cosines", "alignment", "distances")
    ),
    *(f"depth_{r}_{k}.png" for r in REGIMES for k in ("collapse", "auroc")),
    "relation_nc1_auroc_neco.png",  # per-epoch relation figures need snapshot AUROC
}
OPTIONAL = ["nc1", "nc1_trace", "cdnv", "nc5", "nc5_centred", "train_error",
            "within_class_variance",
            "mean_cosine", "weight_cosine", "weight_mean_cosine", "mean_distance", "ncc_acc", "dim",
            "count", "nc3", "nc4", "nc1_trace.decay_rate", "nc1_trace.decay_r2",
            *(m for m, _, _ in T.NC_ROWS)]  # fmt: skip


@pytest.fixture(scope="module")
def fixture_data():
    return make_results()


@pytest.fixture(scope="module")
def with_ci():
    return make_results(n_id=200, n_ood=150, intervals=True)[0]


@pytest.fixture(scope="module")
def report(fixture_data, tmp_path_factory):
    results, scores = fixture_data
    out = tmp_path_factory.mktemp("report")
    return out, write_report(results, out, scores)


def _is_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def _set(res: Results, value: float, **filters) -> Results:
    """A copy of ``res`` with ``value`` in the rows matching ``filters``."""
    df = res.to_frame()
    df.loc[res.select(**filters).index, "value"] = value
    return Results(df, res.meta)


def _auroc(res: Results, regime: str, det: str, ood: str) -> float:
    return res.value(regime=regime, detector=det, ood=ood, layer=PENULTIMATE, metric="auroc")


# ---------------------------------------------------------------------------------------
# the fixture and the results table


def test_write_report_writes_every_file(report):
    out, paths = report
    assert paths["html"] == out / "report.html" and paths["html"].stat().st_size > 0
    assert paths["markdown"] == out / "report.md" and paths["markdown"].stat().st_size > 0
    written = {p.name for p in (out / "figures").glob("*.png")}
    assert written == EXPECTED_FIGURES
    md = paths["markdown"].read_text()
    for name in written:
        assert paths[f"figures/{name}"] == out / "figures" / name
        w, h = _is_png((out / "figures" / name).read_bytes())
        assert w > 300 and h > 200
        assert f"](figures/{name})" in md  # every figure linked from report.md
    assert not list(out.rglob(".*.tmp"))


def test_fixture_metrics_follow_the_conventions(fixture_data):
    """The fixture's FPR@95 and AUROC match brute force (independent checks)."""
    _, scores = fixture_data
    s_id, s_ood = scores["standard/energy/id"], scores["standard/energy/digits"]
    keep = [t for t in np.unique(s_id) if np.mean(s_id >= t) >= 0.95]
    assert math.isclose(fpr_at_95_tpr(s_id, s_ood), np.mean(s_ood >= max(keep)))
    m = ood_metrics_reference(s_id, s_ood)
    pairs = (s_id[:, None] > s_ood[None, :]).mean() + 0.5 * (s_id[:, None] == s_ood[None, :]).mean()
    assert math.isclose(m["auroc"], pairs, rel_tol=1e-12)


def test_fixture_collapse_agrees_with_ncood_collapse():
    """The fixture's NC formulas, written from DESIGN.md, agree with ncood.collapse."""
    from ncood.collapse import collapse_metrics, nc5
    from ncood.types import LinearHead

    rng = np.random.default_rng(3)
    C, D = len(CLASSES), 24
    y = np.repeat(np.arange(C), 40)
    z = rng.normal(0, 1, (C, D))[y] + rng.normal(0, 0.7, (len(y), D))
    W, b = rng.normal(0, 1, (C, D)), rng.normal(0, 0.1, C)
    ours, theirs = collapse_reference(z, y, W, b), collapse_metrics(z, y, LinearHead(W, b))
    for k in ("nc1", "nc1_trace", "cdnv", "nc2_equiangular_means", "nc2_maxangle_weights",
              "nc2_equinorm_weights", "nc3", "nc4", "ncc_acc"):  # fmt: skip
        assert ours[k] == pytest.approx(theirs[k], rel=1e-9), k
    np.testing.assert_allclose(ours["mean_cosine"], theirs["mean_cosines"], atol=1e-12)
    np.testing.assert_allclose(ours["within_class_variance"], theirs["within_class_variance"])
    z_ood = rng.normal(0.5, 1, (100, D))
    assert nc5_reference(z, y, z_ood) == pytest.approx(nc5(z, y, z_ood), rel=1e-9)


def _vocabulary() -> set[str]:
    doc = Path(__file__).parents[1] / "docs" / "results_schema.md"
    section = doc.read_text().split("## Metric vocabulary", 1)[1]
    return {name for line in section.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([^`]+)`", line.split("|")[1])}  # fmt: skip


@pytest.mark.parametrize("intervals", [False, True])
def test_results_follow_the_schema(fixture_data, with_ci, tmp_path, intervals):
    """What run-time schema validation used to check, as a test of the fixture's table."""
    res = with_ci if intervals else fixture_data[0]
    df = res.to_frame()
    assert tuple(df.columns) == COLUMNS
    vocab = _vocabulary()
    for m in df["metric"].unique():
        assert m in vocab or re.sub(r"^\w+\.decay_", "<nc metric>.decay_", m) in vocab, m
    ood = df[df["metric"].isin([m for m, _, _ in T.OOD_METRICS])]
    assert (
        ood[["regime", "seed", "epoch", "layer", "detector", "ood", "n_id", "n_ood"]]
        .notna()
        .all()
        .all()
    )
    assert ood["value"].between(0, 1).all()
    nc = df[df["metric"].isin(["nc1", "cdnv", "within_class_variance", "mean_cosine"])]
    assert nc["detector"].isna().all() and nc[["layer", "epoch", "n_id"]].notna().all().all()
    pairs = df[df["j"].notna()]
    assert (pairs["i"] < pairs["j"]).all()
    C = len(CLASSES)
    per_class = df[df["i"].notna() & df["j"].isna()]
    assert (per_class.groupby(["regime", "epoch", "layer", "metric"]).size() == C).all()
    assert (pairs.groupby(["regime", "epoch", "layer", "metric"]).size() == C * (C - 1) // 2).all()
    ci = df[df["ci_low"].notna()]
    ood_ci = ci[ci["metric"] != "spearman"]  # the relation's rows always have intervals
    assert len(ood_ci) > 0 if intervals else len(ood_ci) == 0
    assert ((ci["ci_low"] <= ci["value"]) & (ci["value"] <= ci["ci_high"])).all()
    assert df["value"].map(np.isfinite).all()
    assert Results.load(res.save(tmp_path)).to_frame().equals(df)  # round trip, exact


# ---------------------------------------------------------------------------------------
# tables: pivots of the Results


def _bold_rows(table: T.Table, j: int) -> set[str]:
    return {row[0].text for row in table.rows if row[j].bold}


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("ood", OOD_SETS)
def test_ood_table_shows_the_results_and_marks_the_best(fixture_data, regime, ood):
    res, _ = fixture_data
    table = T.ood_table(res, regime, ood)
    assert [row[0].text for row in table.rows] == DETECTORS
    picks = {"AUROC (%)": ("auroc", max), "FPR@95 (%)": ("fpr95", min),
             "AUPR-In (%)": ("aupr_in", max), "AUPR-Out (%)": ("aupr_out", max),
             "FPR@95 (OOD+) (%)": ("fpr95_oodpos", min)}  # fmt: skip
    assert table.headers[1:] == list(picks)
    for j, (key, pick) in enumerate(picks.values(), start=1):
        f = {"regime": regime, "ood": ood, "metric": key, "layer": PENULTIMATE}
        shown = {d: f"{100 * res.value(detector=d, **f):.2f}" for d in DETECTORS}
        assert [row[j].text for row in table.rows] == [shown[d] for d in DETECTORS]
        best = pick(float(v) for v in shown.values())
        assert _bold_rows(table, j) == {d for d, v in shown.items() if float(v) == best}


def test_best_marking_ties_and_lower_is_better():
    res, _ = make_results(n_id=200, n_ood=100)
    f = {"regime": "standard", "ood": "digits", "layer": PENULTIMATE}
    res = _set(res, 0.8, metric="auroc", **f)
    res = _set(res, 0.5, metric="fpr95", **f)
    res = _set(res, 0.95, metric="auroc", detector=["vim", "neco"], **f)  # tied best AUROC
    res = _set(res, 0.9, metric="fpr95", detector="vim", **f)  # ... worst FPR
    res = _set(res, 0.2, metric="fpr95", detector="neco", **f)
    res = _set(res, 0.200001, metric="fpr95", detector="msp", **f)  # equal as displayed
    table = T.ood_table(res, "standard", "digits")
    assert _bold_rows(table, 1) == {"vim", "neco"}
    assert _bold_rows(table, 2) == {"neco", "msp"}
    md = T.markdown_table(table)
    assert "| vim | **95.00** | 90.00 |" in md and "| neco | **95.00** | **20.00** |" in md
    text = T.text_table(table)
    assert "95.00*" in text and "90.00*" not in text


def test_regime_collapse_nc5_depth_and_epoch_tables(fixture_data):
    res, _ = fixture_data
    t = T.regime_table(res, "digits")
    assert t.headers[1:4] == ["AUROC standard", "AUROC memorize", "ΔAUROC (memorize − standard)"]
    for row in t.rows:
        d = row[0].text
        diff = 100 * (_auroc(res, "memorize", d, "digits") - _auroc(res, "standard", d, "digits"))
        assert row[3].text == f"{diff:+.2f}"
    fpr = {
        d: res.value(regime="standard", detector=d, ood="digits", layer=PENULTIMATE, metric="fpr95")
        for d in DETECTORS
    }
    assert _bold_rows(t, 4) == {min(fpr, key=fpr.get)}

    c = T.collapse_table(res)
    assert c.headers == ["Metric", "Definition", *REGIMES]
    labels = [row[0].text for row in c.rows]
    assert labels[:3] == ["NC1", "NC1 (trace)", "CDNV"] and sum("NC2" in x for x in labels) == 6
    for metric, row in zip([m for m, _, _ in T.NC_ROWS], c.rows, strict=False):
        vals = [res.value(regime=r, epoch=LAST, layer=PENULTIMATE, metric=metric) for r in REGIMES]
        assert [x.text for x in row[2:]] == [f"{v:.4g}" for v in vals]
        assert [x.bold for x in row[2:]] == [
            float(f"{v:.4g}") == min(float(f"{u:.4g}") for u in vals) for v in vals
        ]
    cos = [np.mean(T.final(res, r, metric="weight_mean_cosine")["value"]) for r in REGIMES]
    assert [x.text for x in c.rows[-1][2:]] == [f"{v:.4g}" for v in cos]

    n5 = T.nc5_table(res)
    assert [row[0].text for row in n5.rows] == OOD_SETS
    assert n5.headers == [
        "OOD set",
        *(f"NC5 {r}" for r in REGIMES),
        *(f"NC5 centred {r}" for r in REGIMES),
    ]
    d = T.depth_auroc_table(res, "standard")
    assert d.headers[2:] == LAYERS and {row[0].text for row in d.rows} == {
        "mahalanobis",
        "vim",
        "neco",
    }
    assert T.depth_table(res, "standard").headers[1:] == ["nc1", "nc1_trace", "cdnv", "ncc_acc"]
    e = T.epochs_table(res, "memorize")
    assert e.headers[1:] == [f"epoch {k}" for k in SNAPSHOTS]
    zero = min(
        k for k in SNAPSHOTS if res.value(regime="memorize", epoch=k, metric="train_error") == 0
    )
    assert e.note == f"Training error first reaches zero at epoch {zero}."
    tr = T.training_table(res)
    assert [row[2].text for row in tr.rows] == [
        f"{100 * res.value(regime=r, epoch=LAST, metric='train_acc'):.2f}" for r in REGIMES
    ]


def test_cells_show_intervals_and_seed_spread(fixture_data, with_ci):
    row = T.ood_table(with_ci, "standard", "digits").rows[0]
    r = with_ci.select(
        regime="standard", detector="msp", ood="digits", layer=PENULTIMATE, metric="auroc"
    ).iloc[0]
    assert row[1].text == f"{100 * r.value:.2f} [{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}]"
    seeds = with_seeds(fixture_data[0], n=3)
    row = T.ood_table(seeds, "standard", "digits").rows[0]
    v = seeds.select(
        regime="standard", detector="msp", ood="digits", layer=PENULTIMATE, metric="auroc"
    )["value"]
    assert len(v) == 3
    assert row[1].text == f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}"


def test_terminal_summary_is_plain_text_with_every_number(fixture_data):
    res, _ = fixture_data
    text = terminal_summary(res)
    assert text.isascii()
    for name in [*DETECTORS, *OOD_SETS, *REGIMES, "NC1", "NC4", "NC5"]:
        assert name in text
    for r, d, o in ((r, d, o) for r in REGIMES for d in DETECTORS for o in OOD_SETS):
        assert f"{100 * _auroc(res, r, d, o):.2f}" in text
    assert "NC1" not in terminal_summary(without(res, metric=OPTIONAL))


# ---------------------------------------------------------------------------------------
# findings


def test_findings_name_the_best_detector_and_state_the_gap():
    res, _ = make_results(n_id=200, n_ood=100)
    res = _set(res, 0.7, metric="auroc", layer=PENULTIMATE)
    res = _set(
        res,
        0.9,
        metric="auroc",
        layer=PENULTIMATE,
        regime="standard",
        detector="neco",
        ood="digits",
    )
    res = _set(
        res,
        0.75,
        metric="auroc",
        layer=PENULTIMATE,
        regime="memorize",
        detector="msp",
        ood="texture_crops",
    )
    out = findings(res)
    joined = " ".join(out)
    assert (
        "Best detector on digits (standard): neco, AUROC 90.00%; next: msp, 70.00%, "
        "20.00 points lower." in out
    )
    assert any(
        s.startswith("Best detector on texture_crops (memorize): msp, AUROC 75.00%") for s in out
    )
    assert "Best AUROC on digits is 20.00 points lower under memorize" in joined
    # no interval, no claim: neither "beats" nor "about equal"
    assert "beats" not in joined and "about equal" not in joined
    nc1 = {r: res.value(regime=r, epoch=LAST, layer=PENULTIMATE, metric="nc1") for r in REGIMES}
    lo, hi = sorted(nc1, key=nc1.get)
    assert f"By NC1, {lo} is more collapsed than {hi}" in joined
    assert f"{nc1[hi] / nc1[lo]:.1f}x lower" in joined


def _diff_row(res: Results, regime: str, ood: str, a: str, b: str):
    """``100 * (value, lo, hi)`` of AUROC(a) - AUROC(b) from the auroc_diff rows, or None."""
    for det, vs, sign in ((a, b, 1), (b, a, -1)):
        rows = res.select(
            regime=regime, ood=ood, metric="auroc_diff", detector=det, params={"vs": vs}
        )
        if len(rows):
            v, lo, hi = 100 * rows[["value", "ci_low", "ci_high"]].iloc[0].to_numpy(float)
            return (v, lo, hi) if sign > 0 else (-v, -hi, -lo)
    return None


def test_findings_claim_differences_only_from_paired_intervals(with_ci):
    claims = {"beats": 0, "are about equal": 0, "next:": 0}
    for s in findings(with_ci):
        m = re.match(
            r"Best detector on (\w+) \((\w+)\): (\w+), .*?; (?:next: (\w+)|\3 (?:beats|and) (\w+))",
            s,
        )
        if not m:
            continue
        ood, reg, a, b = m[1], m[2], m[3], m[4] or m[5]
        stored = _diff_row(with_ci, reg, ood, a, b)
        if m[4]:  # no paired interval: numbers only
            assert stored is None and "about equal" not in s and "beats" not in s
            claims["next:"] += 1
            continue
        v, lo, hi = stored
        word = "are about equal" if lo <= 0 <= hi else "beats"
        assert word in s and f"{v:.2f} points (95% CI [{lo:.2f}, {hi:.2f}])" in s
        claims[word] += 1
    assert all(claims.values()), claims  # each case occurs in the fixture
    for s in findings(with_ci):  # "below chance" needs the whole interval below 50%
        tail = s.split("below 50% (chance) for ")[1] if "below 50%" in s else ""
        for hi in re.findall(r"CI \[[\d.]+, ([\d.]+)\]", tail):
            assert float(hi) < 50, s


def test_findings_between_equal_values_claim_no_difference():
    res, _ = make_results(n_id=200, n_ood=100)
    df = res.to_frame()
    std = df[df["regime"] == "standard"]
    res = Results(std, res.meta)
    res.extend(Results(std.assign(regime="memorize")))
    res = _set(res, 0.8, metric="auroc", layer=PENULTIMATE)
    joined = " ".join(findings(res))
    assert "points lower" not in joined.replace("0.00 points lower", "")
    assert "more collapsed than" not in joined and "NC1 is equal across regimes" in joined
    for o in OOD_SETS:
        assert f"Best AUROC on {o}: equal under memorize and standard" in joined


def test_findings_on_missing_parts_do_not_crash(fixture_data):
    out = findings(without(fixture_data[0], metric=OPTIONAL))
    assert out and all("NC1" not in s for s in out)


# ---------------------------------------------------------------------------------------
# HTML and Markdown


class _DomScan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.refs, self.tags = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.ids += [a["id"]] if "id" in a else []
        self.imgs += [a.get("src", "")] if tag == "img" else []
        self.refs += [a[k] for k in ("src", "href") if k in a]


def _check_dom(html: str, n_figures: int) -> None:
    scan = _DomScan()
    scan.feed(html)
    assert [i for i in scan.ids if i in (*SECTION_IDS, "conventions")] == [
        *SECTION_IDS,
        "conventions",
    ]
    assert len(scan.imgs) == n_figures
    for src in scan.imgs:
        assert src.startswith("data:image/png;base64,")
        _is_png(base64.b64decode(src.split(",", 1)[1], validate=True))
    assert all(r.startswith(("#", "data:")) for r in scan.refs), scan.refs  # self-contained
    assert not ({"script", "link", "iframe"} & scan.tags)


def test_html_is_self_contained_ordered_and_escaped(report, fixture_data):
    out, paths = report
    html = paths["html"].read_text()
    _check_dom(html, len(EXPECTED_FIGURES))
    assert "&lt;test &amp; escape&gt;" in html and "<test & escape>" not in html
    assert "<style>" in html and "http://" not in html.split("</style>")[0]
    assert html.count("<table") >= len(REGIMES) * len(OOD_SETS) + len(OOD_SETS) + 2
    assert "<strong>" in html
    for k, v in fixture_data[0].meta["conventions"].items():  # conventions from run.json
        assert f"<dt>{k}</dt><dd>{v}</dd>" in html
    md = paths["markdown"].read_text()
    assert "**" in md and "\\<test & escape\\>" in md
    for t in ("| msp |", "## Findings", "## Conventions", "- **positive**"):
        assert t in md


def test_numbers_in_the_html_are_the_results_values(report, fixture_data):
    html = report[1]["html"].read_text()
    res = fixture_data[0]
    for r, d, o in ((r, d, o) for r in REGIMES for d in DETECTORS for o in OOD_SETS):
        assert re.search(rf">(<strong>)?{100 * _auroc(res, r, d, o):.2f}(</strong>)?</td>", html)
    for s in findings(res):
        assert s.replace("&", "&amp;") in html


def test_intervals_and_seeds_reach_the_report(with_ci, fixture_data, tmp_path):
    html = write_report(with_ci, tmp_path / "ci")["html"].read_text()
    assert re.search(r"<td class=\"num\">(<strong>)?[\d.]+ \[[\d.]+, [\d.]+\]", html)
    assert re.search(r"AUROC [\d.]+%, 95% CI \[[\d.]+, [\d.]+\]", html)
    html = write_report(with_seeds(fixture_data[0]), tmp_path / "seeds")["html"].read_text()
    assert re.search(r"<td class=\"num\">(<strong>)?[\d.]+ ± [\d.]+", html)
    assert "over 3 seeds" in html and "seeds 0, 1, 2" in html


def test_missing_optional_parts_render_as_notes(fixture_data, tmp_path):
    res = without(fixture_data[0], metric=OPTIONAL)
    html = write_report(res, tmp_path)["html"].read_text()
    _check_dom(html, 2)  # training curves and the regime comparison
    assert "Raw scores of standard were not saved (scores.npz): not computed." in html
    assert "Neural collapse was not computed in this run." in html
    assert "Per-layer analysis of memorize: not computed." in html
    assert "Collapse across training of memorize: not computed." in html
    # one regime without depth and snapshots, the other without per-layer detectors
    res = without(fixture_data[0], regime="memorize", layer=LAYERS[:-1])
    res = without(res, regime="memorize", epoch=SNAPSHOTS[:-1])
    res = without(res, regime="standard", metric="auroc", layer=LAYERS[:-1])
    html = write_report(res, tmp_path / "partial", fixture_data[1])["html"].read_text()
    assert "Per-layer analysis of memorize: not computed." in html
    assert "Collapse across training of memorize: not computed." in html
    assert "Detector AUROC per layer of standard: not computed." in html
    assert "Per-layer analysis of standard: not computed." not in html


def test_section_ids_are_stable():
    assert SECTION_IDS == (
        "setup",
        "training",
        "ood",
        "ranking",
        "selection",
        "scores",
        "roc",
        "collapse",
        "nc5",
        "depth",
        "epochs",
        "relation",
        "explain",
        "findings",
    )


# ---------------------------------------------------------------------------------------
# browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not on PATH (apt-get install chromium)"
)
def test_report_opens_in_headless_chromium(report, tmp_path):
    out, paths = report
    url = paths["html"].resolve().as_uri()
    base = [CHROMIUM, *CHROMIUM_FLAGS]
    run = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "<html" in run.stdout
    _check_dom(run.stdout, len(EXPECTED_FIGURES))
    console = [
        line for line in run.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line
    ]
    assert not console, console  # no console messages, no failed resource
    shot = tmp_path / "first_screen.png"
    subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1366,900",
         f"--screenshot={shot}", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert _is_png(shot.read_bytes()) == (1366, 900)
    with Image.open(shot) as im:  # not a blank page: text and cards drawn
        assert len(np.unique(np.asarray(im.convert("L")))) > 20
    keep = os.environ.get("NCOOD_REPORT_SCREENSHOT")
    if keep:  # keep the screenshot for a person to look at
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)


def test_collapse_figures_draw_what_they_claim(fixture_data):
    """Figure details a reader relies on: ETF line, class labels, log scales, zero-error line."""
    from ncood.report import figures as F

    res, _ = fixture_data
    cos = T.final(res, "standard", layer=PENULTIMATE, metric="mean_cosine")["value"]
    ax = F.cosine_histogram(cos, None, len(CLASSES), title="t").axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert any(np.allclose(line.get_xdata(), -1 / (len(CLASSES) - 1)) for line in ax.get_lines())
    heat = F.heatmap(np.eye(5), list("abcde"), title="t", label="d")
    assert len(heat.axes) == 2  # heatmap + colour bar
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == list("abcde")
    wide = T.final(res, "standard", metric=["nc1", "cdnv"], ood=None, i=None)
    wide = wide.pivot_table(index="layer", columns="metric", values="value").reindex(LAYERS)
    depth = F.depth_lines(wide, {"nc1": "  (x0.5/layer)"}, title="t").axes[0]
    assert depth.get_yscale() == "log"
    assert [t.get_text() for t in depth.get_xticklabels()] == LAYERS
    assert any("/layer" in t.get_text() for t in depth.get_legend().get_texts())
    err = res.select(regime="memorize", metric="train_error").set_index("epoch")["value"]
    per_epoch = res.select(regime="memorize", layer=PENULTIMATE, metric="nc1").set_index("epoch")
    ax, ax_err = F.epoch_lines(per_epoch[["value"]], err, 4, title="t").axes
    assert ax.get_yscale() == "log" and ax_err.get_ylabel()
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed and np.allclose(dashed[0].get_xdata(), 4)


def test_rows_without_regime_or_epoch_are_one_network(fixture_data, tmp_path):
    """`ncood score` / `ncood collapse --features` write rows that name no regime or epoch."""
    df = fixture_data[0].to_frame()
    df = df[(df["regime"] == "standard") & (df["epoch"] == LAST)].assign(regime=None, epoch=None)
    res = Results(df, {})
    text = terminal_summary(res)
    for d, o in ((d, o) for d in DETECTORS for o in OOD_SETS):
        v = res.value(detector=d, ood=o, layer=PENULTIMATE, metric="auroc")
        assert f"{100 * v:.2f}" in text
    assert f"{T.UNNAMED}: AUROC (%)" in text and f"{T.UNNAMED}: FPR@95 (%)" in text
    assert any(s.startswith(f"Best detector on digits ({T.UNNAMED})") for s in findings(res))
    no_ood = Results(df[df["detector"].isna() & df["layer"].notna()], {})  # collapse only
    html = write_report(no_ood, tmp_path)["html"].read_text()
    assert "OOD detection was not computed in this run." in html
    assert T.UNNAMED in html and "No training history recorded." in html
    _check_dom(html, 5)  # 4 collapse figures and the depth figure


def test_anything_but_results_is_refused_with_a_clear_error(tmp_path):
    from ncood.errors import ConfigError

    for call in (terminal_summary, findings, lambda r: write_report(r, tmp_path)):
        with pytest.raises(ConfigError, match=r"Results; got dict\. Load a run with Results\.load"):
            call({"schema_version": 1, "regimes": {}})
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------------------
# collapse and detection (the relation)
def _rho_cell(r) -> str:
    return f"{r['value']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"


def test_relation_section_tables_figures_and_sentences(tmp_path):
    from ncood.report.render import (
        RELATION_NC,
        relation_sentences,
        relation_table,
        terminal_epoch,
    )

    res = make_results(n_id=200, n_ood=150, snapshot_auroc=True)[0]
    rel = res.select(metric="spearman")
    assert set(rel["ood"]) == set(OOD_SETS) and set(rel["detector"]) == set(DETECTORS)
    columns = [m for m, _ in RELATION_NC]
    for ood in OOD_SETS:
        table = relation_table(res, ood)
        cells = {r[0].text: [c.text for c in r[1:]] for r in table.rows}
        for _, r in rel[rel["ood"] == ood].iterrows():
            nc = json.loads(r["params"])["nc_metric"]
            assert cells[r["detector"]][columns.index(nc)] == _rho_cell(r)
            assert str(int(r["n_id"])) in cells[r["detector"]][-1]
    # memorize reaches 100% train accuracy; standard (label noise) never does
    acc = res.select(regime="memorize", metric="train_acc")
    assert terminal_epoch(res, "memorize") == int(acc[acc["value"] >= 1.0]["epoch"].min())
    assert terminal_epoch(res, "standard") is None
    out = write_report(res, tmp_path)
    html = out["html"].read_text()
    section = html.split('id="relation"')[1].split('id="explain"')[0]
    assert "Collapse and detection" in html
    for _, r in rel.iterrows():
        assert _rho_cell(r) in section
    for s in relation_sentences(res):
        assert html_escape(s) in section
    assert len(relation_sentences(res)) == len(OOD_SETS)
    for name in ("relation_nc1_auroc_neco.png", *(f"relation_epochs_{r}.png" for r in REGIMES)):
        assert (tmp_path / "figures" / name).is_file(), name
        assert f"](figures/{name})" in out["markdown"].read_text()


@pytest.mark.parametrize(
    ("rho", "lo", "hi", "verdict"),
    [
        (-0.6, -0.8, -0.3, "agrees with NECO's claim"),
        (-0.2, -0.5, 0.1, "no evidence either way"),
        (0.1, -0.3, 0.4, "no evidence either way"),
        (0.5, 0.2, 0.7, "disagrees with NECO's claim"),
        (math.nan, math.nan, math.nan, "undefined"),
    ],
)
def test_relation_sentences_follow_the_sign_rule(rho, lo, hi, verdict):
    from ncood.report.render import relation_sentences

    nc1 = {"ood_metric": "auroc", "nc_metric": "nc1"}
    res = Results(
        [
            result_row("spearman", rho, detector="neco", ood="x", params=nc1, ci=(lo, hi), n_id=12),
            result_row(
                "spearman", 0.3, detector="msp", ood="x", params=nc1, ci=(0.1, 0.5), n_id=12
            ),
        ]
    )
    (sentence,) = relation_sentences(res)
    assert sentence.startswith("On x: NECO: Spearman rho(AUROC, NC1) = ")
    assert verdict in sentence and "12 points" in sentence and "msp" not in sentence
    if np.isfinite(rho):
        assert f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]" in sentence
    phrases = {
        "agrees": ", agrees with NECO's claim",
        "disagrees": ", disagrees with NECO's claim",
        "none": "no evidence either way",
    }
    said = {k for k, p in phrases.items() if p in sentence}
    want = {"agrees with NECO's claim": {"agrees"}, "disagrees with NECO's claim": {"disagrees"}}
    assert said == want.get(verdict, {"none"}), sentence


def test_relation_rows_make_no_network_of_their_own(fixture_data):
    """Spearman rows span every network (no regime): they must not add a phantom one."""
    res = fixture_data[0] if isinstance(fixture_data, tuple) else fixture_data
    assert len(res.select(metric="spearman")) > 0
    assert T.regimes(T.named(res)) == list(REGIMES)
    unnamed = Results([result_row("auroc", 0.9, detector="msp", ood="digits")])
    assert T.regimes(T.named(unnamed)) == [T.UNNAMED]


def test_relation_points_name_their_correlation():
    """Issue 11: NC5 (penultimate only) has fewer points; the cell says which count is whose."""
    from ncood.report.render import RELATION_NC, points_text, relation_table

    res = make_results(n_id=100, n_ood=80, snapshot_auroc=True)[0]
    named = 0
    assert points_text({"NC1": 40, "CDNV": 40}) == "40"
    assert points_text({"NC1": 40, "CDNV": 40, "NC5": 8}) == "NC1, CDNV: 40; NC5: 8"
    for ood in OOD_SETS:
        table = relation_table(res, ood)
        assert table.headers[-1] == "Points per correlation"
        for row in table.rows:
            counts = {
                h: int(r["n_id"])
                for nc, h in RELATION_NC
                for _, r in res.select(
                    metric="spearman", detector=row[0].text, ood=ood,
                    params={"ood_metric": "auroc", "nc_metric": nc},
                ).iterrows()
            }  # fmt: skip
            n, n5 = counts["NC1"], counts["NC5"]
            assert counts["NC1 (trace)"] == counts["CDNV"] == n
            if n5 == n:  # logit detectors: the penultimate layer only, one count
                assert row[-1].text == str(n)
            else:  # per-layer detectors: NC5 has fewer points, each count named
                assert n5 < n and row[-1].text == f"NC1, NC1 (trace), CDNV: {n}; NC5: {n5}"
                named += 1
    assert named  # the fixture has the case the issue describes


# ---------------------------------------------------------------------------------------
# the detector zoo: ranking, selection, 21 detectors in every figure and table


@pytest.fixture(scope="module")
def zoo():
    """21 detectors with AUROC and FPR@95 intervals, paired rows in AUROC order, selection."""
    return make_results(n_id=200, n_ood=150, intervals=True, zoo=True, selection=True)


@pytest.fixture(scope="module")
def zoo_report(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return out, write_report(zoo[0], out, zoo[1])


def _final(res: Results, regime: str, **f):
    df = res.to_frame()
    df = df[(df["regime"] == regime) & (df["epoch"] == df[df["regime"] == regime]["epoch"].max())]
    for k, v in f.items():
        df = df[df[k] == v]
    return df


def test_zoo_fixture_has_what_the_brief_asks(zoo):
    res = zoo[0]
    assert T.detectors(res) == ZOO and len(ZOO) == 21
    from ncood.detectors import list_detectors

    assert sorted(ZOO) == sorted(list_detectors())  # the registry's 21, no invented name
    df = res.to_frame()
    head = df[(df["layer"] == PENULTIMATE) & df["metric"].isin(["auroc", "fpr95"])]
    assert head["ci_low"].notna().all() and head["ci_high"].notna().all()
    assert set(res.values("detector", metric="selection_chosen")) == set(GRIDS)
    assert res.values("ood", metric="selection_auroc") == [VAL_OOD]
    n_cands = {d: math.prod(len(v) for v in g.values()) for d, g in GRIDS.items()}
    per = df[df["metric"] == "selection_auroc"].groupby(["regime", "detector"]).size()
    assert all(per[(r, d)] == n for r in REGIMES for d, n in n_cands.items())
    sel = df[df["metric"].isin(["selection_auroc", "selection_chosen"])]  # the shared schema
    keys = ["regime", "seed", "epoch", "layer", "detector", "ood", "params", "n_id", "n_ood"]
    assert sel[keys].notna().all().all() and sel[["ci_low", "ci_high"]].isna().all().all()
    assert set(sel["layer"]) == {PENULTIMATE} and set(sel["epoch"]) == {LAST}
    assert set(res.meta["selection"]) == set(GRIDS)
    for info in res.meta["selection"].values():
        assert set(info) == {"grid", "chosen", "val_auroc", "val_ood", "n_val_id", "n_val_ood"}


@pytest.mark.parametrize("regime", REGIMES)
def test_ranking_order_numbers_and_hyperparameters(zoo, regime):
    from ncood.report import ranking as R

    res = zoo[0]
    for ood in OOD_SETS:
        table = R.ranking_table(res, regime, ood)
        au = _final(res, regime, metric="auroc", layer=PENULTIMATE, ood=ood)
        want = au.sort_values(["value", "detector"], ascending=[False, True])  # independent
        assert [r[1].text for r in table.rows] == want["detector"].tolist()
        assert [r[0].text for r in table.rows] == [str(k) for k in range(1, 22)]
        fpr = _final(res, regime, metric="fpr95", layer=PENULTIMATE, ood=ood)
        for row, (_, a) in zip(table.rows, want.iterrows(), strict=True):
            assert (
                row[2].text == f"{100 * a.value:.2f} [{100 * a.ci_low:.2f}, {100 * a.ci_high:.2f}]"
            )
            f = fpr[fpr["detector"] == a.detector].iloc[0]
            assert (
                row[3].text == f"{100 * f.value:.2f} [{100 * f.ci_low:.2f}, {100 * f.ci_high:.2f}]"
            )
            ch = _final(res, regime, metric="selection_chosen", detector=a.detector)
            hp = row[5].text
            if len(ch):  # the test rows carry the chosen values; the choice is named
                assert a.params == ch.iloc[0].params
                assert hp.endswith(
                    f"; chosen on validation ({VAL_OOD}, AUROC {100 * ch.iloc[0].value:.2f}%)"
                )
            else:
                assert "chosen" not in hp
            params = json.loads(a.params) if isinstance(a.params, str) else {}
            shown = {k: "auto" if v is None else f"{v:g}" if isinstance(v, float) else v
                     for k, v in params.items()}  # fmt: skip
            assert hp.split(";")[0] == (
                ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"
            )


def _independent_tie(res: Results, regime: str, ood: str, det: str, best: str):
    """(tied, how) from the rows: paired auroc_diff row vs the best first, else CI overlap."""
    diff = _final(res, regime, metric="auroc_diff", ood=ood)
    for a, b, sign in ((det, best, 1), (best, det, -1)):
        r = diff[(diff["detector"] == a) & (diff["params"] == json.dumps({"vs": b}))]
        if len(r):
            lo, hi = sorted(sign * r.iloc[0][["ci_low", "ci_high"]].to_numpy(float))
            return lo <= 0 <= hi, "paired"
    au = _final(res, regime, metric="auroc", ood=ood, layer=PENULTIMATE).set_index("detector")
    (alo, ahi), (blo, bhi) = au.loc[det, ["ci_low", "ci_high"]], au.loc[best, ["ci_low", "ci_high"]]
    return bool(ahi >= blo and bhi >= alo), "overlap"


def test_ranking_marks_ties_from_the_intervals(zoo):
    from ncood.report import ranking as R

    res = zoo[0]
    seen = set()
    for regime, ood in ((r, o) for r in REGIMES for o in OOD_SETS):
        table = R.ranking_table(res, regime, ood)
        best = table.rows[0][1].text
        assert table.rows[0][4].text == "best" and table.rows[0][2].bold
        for row in table.rows[1:]:
            tied, how = _independent_tie(res, regime, ood, row[1].text, best)
            seen.add((tied, how))
            assert row[2].bold == tied
            assert row[4].text.startswith("yes: " if tied else "no: ")
            assert ("diff" in row[4].text) == (how == "paired")
            if how == "overlap":
                assert row[4].text.endswith("overlap" if tied else "disjoint")
    assert {(True, "paired"), (True, "overlap"), (False, "overlap")} <= seen, seen  # each occurs


def test_ranking_tie_rules_on_built_cases():
    """Paired interval wins over overlapping marginal ones; seeds are counted one by one."""
    from ncood.report import ranking as R

    def au(det, v, lo, hi, seed=0):
        return result_row("auroc", v, regime="r", seed=seed, epoch=1, layer=PENULTIMATE,
                          detector=det, ood="o", ci=(lo, hi), n_id=10, n_ood=10)  # fmt: skip

    def diff(a, b, v, lo, hi, seed=0):
        return result_row("auroc_diff", v, regime="r", seed=seed, epoch=1, layer=PENULTIMATE,
                          detector=a, ood="o", params={"vs": b}, ci=(lo, hi))  # fmt: skip

    rows = [au("a", 0.90, 0.86, 0.94), au("b", 0.88, 0.84, 0.92), au("c", 0.80, 0.75, 0.85),
            diff("a", "b", 0.02, 0.005, 0.035)]  # fmt: skip
    t = R.ranking_table(Results(rows), "r", "o")
    cells = {r[1].text: r[4].text for r in t.rows}
    assert cells == {
        "a": "best",
        "b": "no: diff -2.00 [-3.50, -0.50]",
        "c": "no: intervals disjoint",
    }
    rows[-1] = diff("a", "b", 0.02, -0.01, 0.05)
    t = R.ranking_table(Results(rows), "r", "o")
    assert t.rows[1][4].text == "yes: diff -2.00 [-5.00, +1.00]" and t.rows[1][2].bold
    no_ci = [result_row("auroc", v, regime="r", seed=0, epoch=1, layer=PENULTIMATE, detector=d,
                        ood="o") for d, v in (("a", 0.9), ("b", 0.8))]  # fmt: skip
    t = R.ranking_table(Results(no_ci), "r", "o")
    assert t.rows[1][4].text == "n/a (no intervals)" and not t.rows[1][2].bold
    seeds = [au("a", 0.90, 0.88, 0.92, 0), au("b", 0.89, 0.87, 0.91, 0),
             au("a", 0.91, 0.90, 0.92, 1), au("b", 0.85, 0.84, 0.86, 1)]  # fmt: skip
    t = R.ranking_table(Results(seeds), "r", "o")
    assert [r[1].text for r in t.rows] == ["a", "b"]
    assert t.rows[1][4].text == "tied in 1 of 2 seeds" and not t.rows[1][2].bold
    assert t.rows[0][2].text == f"{90.5:.2f} ± {100 * np.std([0.90, 0.91], ddof=1):.2f}"


@pytest.mark.parametrize("regime", REGIMES)
def test_selection_tables_show_the_argmax_of_the_candidates(zoo, regime):
    from ncood.report import ranking as R

    res = zoo[0]
    cands = _final(res, regime, metric="selection_auroc")
    summary = {r[0].text: [c.text for c in r] for r in R.selection_summary_table(res, regime).rows}
    assert list(summary) == list(GRIDS)
    tables = R.candidate_tables(res, regime)
    for det, grid in GRIDS.items():
        c = cands[cands["detector"] == det]
        best = c.loc[c["value"].idxmax()]  # pandas: first maximum, as the selection rule
        chosen = json.loads(best.params)
        shown = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()
        )
        row = summary[det]
        assert row[2] == shown and row[3] == f"{100 * best.value:.2f}"
        assert row[1] == "; ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in grid.items())
        assert row[4] == f"ID 300, {VAL_OOD} 250"
        assert (
            _final(res, regime, metric="selection_chosen", detector=det).iloc[0].params
            == best.params
        )
        if len(grid) == 1:  # a row of the shared table: the bold cell is the argmax
            (key,) = grid
            (line,) = [r for r in tables[0].rows if r[0].text == det]
            bold = [x.text for x in line[2:] if x.bold]
            assert bold == [f"{chosen[key]}: {100 * best.value:.2f}"]
            texts = [x.text for x in line[2:] if x.text]
            assert texts == [
                f"{v}: {100 * c[c['params'] == json.dumps({key: v})].iloc[0].value:.2f}"
                for v in grid[key]
            ]
        else:  # a matrix: rows the first parameter, columns the second
            (t,) = [
                t
                for t in tables
                if t.title == f"{regime}, {det}: validation AUROC (%) per candidate"
            ]
            k1, k2 = grid
            bold = [(i, j) for i, r in enumerate(t.rows) for j, x in enumerate(r[1:]) if x.bold]
            assert bold == [(grid[k1].index(chosen[k1]), grid[k2].index(chosen[k2]))]
            assert t.rows[bold[0][0]][bold[0][1] + 1].text == f"{100 * best.value:.2f}"
            assert sum(x.text != T.MISSING for r in t.rows for x in r[1:]) == len(c)


def test_selection_sentence_says_whether_test_sets_were_used(zoo):
    from ncood.report import ranking as R

    res = zoo[0]
    s = R.selection_sentence(res)
    assert f"validation OOD set {VAL_OOD} (250 images)" in s and "(300 images)" in s
    assert s.endswith("the test sets were not used for the choice.")
    assert all(o in s for o in OOD_SETS)
    df = res.to_frame()
    sel = df["metric"].str.startswith("selection_")
    leaked = Results(df.assign(ood=df["ood"].mask(sel, "digits")), res.meta)
    s = R.selection_sentence(leaked)
    assert "digits is also a test OOD set" in s and "were not used" not in s
    two = Results(df.assign(ood=df["ood"].mask(sel, f"{VAL_OOD}+texture_crops")), res.meta)
    s = R.selection_sentence(two)  # several validation sets are joined by "+" (the schema)
    assert "validation OOD sets" in s and "texture_crops is also a test OOD set" in s
    assert R.selection_sentence(make_results(n_id=100, n_ood=80)[0]) == ""


def test_figures_keep_to_the_top_detectors_plus_neco_and_vim(zoo):
    from ncood.report import figures as F
    from ncood.report import ranking as R

    res = zoo[0]
    df = res.to_frame()
    head = df[(df["metric"] == "auroc") & (df["layer"] == PENULTIMATE) & (df["epoch"] == LAST)]
    mean = head.groupby("detector")["value"].mean().reset_index()
    top = mean.sort_values(["value", "detector"], ascending=[False, True])["detector"][:5]
    want = set(top) | {"neco", "vim"}
    shown = R.shown_detectors(res)
    assert set(shown) == want and shown == [d for d in ZOO if d in want]
    assert R.shown_detectors(make_results(n_id=100, n_ood=80)[0]) == DETECTORS  # six: all
    colors = F.detector_colors(shown)
    assert len(set(colors.values())) == len(shown)  # no two drawn alike
    assert len(set(F.detector_colors(ZOO[:18]).values())) == 18
    assert F.detector_colors(["neco", "vim"]) == {"neco": F.detector_color("neco"),
                                                  "vim": F.detector_color("vim")}  # fmt: skip


def test_zoo_report_renders_readably(zoo, zoo_report):
    from ncood.report import ranking as R

    res = zoo[0]
    out, paths = zoo_report
    html, md = paths["html"].read_text(), paths["markdown"].read_text()
    _check_dom(html, len(list((out / "figures").glob("*.png"))))
    section = html.split('<section id="ranking">')[1].split('<section id="selection">')[0]
    assert section.count("<table") == len(REGIMES) * len(OOD_SETS)
    assert section.count("<tr>") == len(REGIMES) * len(OOD_SETS) * 22  # header + 21 rows
    sel = html.split('<section id="selection">')[1].split('<section id="scores">')[0]
    assert html_escape(R.selection_sentence(res)) in sel
    for det in GRIDS:
        assert f"<td>{det}</td>" in sel
    for t in ("## Detector ranking", "## Hyperparameter selection", "| 1 | ",
              "the test sets were not used for the choice"):  # fmt: skip
        assert t in md, t
    # per-detector figures draw 7 of 21 and say so; their size stays bounded
    note = "Drawn: the top 5 detectors by mean AUROC, and neco and vim (7 of 21)"
    assert html.count(note) >= 5  # regime bars, score and ROC figures of both regimes
    sizes = {p.name: _is_png(p.read_bytes()) for p in (out / "figures").glob("*.png")}
    assert all(w <= 1800 and h <= 1600 for w, h in sizes.values()), sizes
    text = terminal_summary(res)
    assert text.isascii()
    assert text.count("detectors ranked by AUROC") == len(REGIMES) * len(OOD_SETS)
    assert "hyperparameters chosen on validation data" in text


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not on PATH (apt-get install chromium)"
)
def test_zoo_report_opens_in_headless_chromium(zoo_report, tmp_path):
    """The 21-detector report as a browser parses it: ranking and selection tables, no errors."""
    out, paths = zoo_report
    run = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p'}", "--dump-dom",
         paths["html"].resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    dom = run.stdout
    _check_dom(dom, len(list((out / "figures").glob("*.png"))))
    ranking = dom.split('<section id="ranking">')[1].split('<section id="selection">')[0]
    assert ranking.count("<table") == len(REGIMES) * len(OOD_SETS)
    selection = dom.split('<section id="selection">')[1].split('<section id="scores">')[0]
    assert selection.count("<table") >= len(REGIMES) * 4  # summary, 1-D grids, gen, nnguide
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console


def test_depth_finding_lists_the_largest_gains_of_a_zoo(zoo):
    """With 10 per-layer detectors the sentence names the 5 largest gains and the count."""
    from ncood.report.findings import MAX_LISTED, depth_findings

    res = zoo[0]
    branches = set()
    for regime in REGIMES:
        df = _final(res, regime, metric="auroc")
        df = df[
            df["detector"].isin(
                df.groupby("detector")["layer"].nunique().pipe(lambda n: n[n > 1].index)
            )
        ]
        pct = df.assign(v=(100 * df["value"]).round(2))
        pen = pct[pct["layer"] == PENULTIMATE].set_index(["detector", "ood"])["v"]
        early = pct[pct["layer"] != PENULTIMATE].groupby(["detector", "ood"])["v"].max()
        gain = (early - pen).dropna()
        better = gain[gain > 0].sort_values(ascending=False)
        (s,) = [f for f in depth_findings(res) if f.startswith(f"In {regime}, per-layer")]
        assert f"at penultimate for {len(gain) - len(better)} of {len(gain)} " in s
        named = re.findall(r"(\w+) on (\w+) \(\w+ [\d.]+% vs [\d.]+%\)", s)
        if len(better) > MAX_LISTED:
            assert f"for the other {len(better)}, by the most for" in s
            assert len(named) == MAX_LISTED
            branches.add("largest")
            assert {g for g in named} <= set(better.index) and min(
                better[list(named)]
            ) >= better.iloc[MAX_LISTED]
        else:
            assert set(named) == set(better.index)
            branches.add("every")
    assert branches == {"largest", "every"}  # the fixture has both cases


def test_params_text_names_derived_values_auto():
    from ncood.report.ranking import params_text

    assert params_text('{"dim": null, "variance": 0.9}') == "dim=auto, variance=0.9"
    assert params_text('{"percentile": 90.0, "T": 1.0}') == params_text(
        '{"percentile": 90, "T": 1}'
    )
    assert params_text('{"alpha": 0.0001}') == "alpha=0.0001"
    assert params_text('{"k": 50}') == "k=50"
    assert params_text("{}") == "defaults"
    assert params_text(None) == "defaults"
