"""Tests of ncood.report: files written, schema, best-value marking, findings, HTML, browser."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from ncood.errors import NcoodError
from ncood.report import (
    SECTION_IDS,
    ResultsError,
    findings,
    format_terminal_summary,
    results_schema,
    validate_results,
    write_report,
)
from ncood.report import tables as T
from report_fixtures import (
    DETECTORS,
    LAYERS,
    OOD_SETS,
    REGIMES,
    fpr_at_95_tpr,
    make_results,
    ood_metrics_reference,
    strip_optional,
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
}


@pytest.fixture(scope="module")
def fixture_data():
    return make_results()


@pytest.fixture(scope="module")
def report(fixture_data, tmp_path_factory):
    results, scores = fixture_data
    out = tmp_path_factory.mktemp("report")
    paths = write_report(copy.deepcopy(results), scores, out)
    return out, paths


def _is_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


# ---------------------------------------------------------------------------------------
# files


def test_write_report_writes_every_file(report):
    out, paths = report
    assert paths["html"] == out / "report.html" and paths["html"].stat().st_size > 0
    assert paths["markdown"] == out / "report.md" and paths["markdown"].stat().st_size > 0
    written = {p.name for p in (out / "figures").glob("*.png")}
    assert written == EXPECTED_FIGURES
    for name in written:
        assert paths[f"figures/{name}"] == out / "figures" / name
        w, h = _is_png((out / "figures" / name).read_bytes())
        assert w > 300 and h > 200
    md = paths["markdown"].read_text()
    html = paths["html"].read_text()
    for name in written:  # every figure linked from report.md
        assert f"](figures/{name})" in md
    assert "could not be drawn" not in html and "could not be drawn" not in md
    assert not list(out.glob(".*.tmp")) and not list((out / "figures").glob(".*.tmp"))


def test_fixture_metrics_follow_the_conventions(fixture_data):
    """The fixture's FPR@95 matches a brute-force threshold search (independent check)."""
    _, scores = fixture_data
    s_id, s_ood = scores["standard/energy/id"], scores["standard/energy/digits"]
    # smallest threshold t keeping at least 95% of ID (>= t) among the ID scores
    keep = [t for t in np.unique(s_id) if np.mean(s_id >= t) >= 0.95]
    t = max(keep)
    assert math.isclose(fpr_at_95_tpr(s_id, s_ood), np.mean(s_ood >= t))
    m = ood_metrics_reference(s_id, s_ood)
    pairs = (s_id[:, None] > s_ood[None, :]).mean() + 0.5 * (s_id[:, None] == s_ood[None, :]).mean()
    assert math.isclose(m["auroc"], pairs, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------
# schema


def test_results_validate_against_schema(fixture_data):
    results, _ = fixture_data
    jsonschema.Draft202012Validator.check_schema(results_schema())
    validate_results(results)
    roundtrip = json.loads(json.dumps(results))
    validate_results(roundtrip)
    jsonschema.validate(roundtrip, results_schema(), cls=jsonschema.Draft202012Validator)


def _del(r, *path):
    d = r
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]


def _set(value, *path):
    def f(r):
        d = r
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value

    return f


@pytest.mark.parametrize(
    ("mutate", "expected_path", "expected_text"),
    [
        (lambda r: _del(r, "regimes", "standard", "ood"), "regimes/standard", "'ood'"),
        (lambda r: _del(r, "schema_version"), "(top level)", "'schema_version'"),
        (
            _set("high", "regimes", "standard", "ood", "msp", "digits", "auroc"),
            "regimes/standard/ood/msp/digits/auroc",
            "'high'",
        ),
        (
            _set(1.5, "regimes", "memorize", "ood", "vim", "gaussian_noise", "fpr95"),
            "regimes/memorize/ood/vim/gaussian_noise/fpr95",
            "1.5",
        ),
        (_set("12", "data", "id", "n_train"), "data/id/n_train", "'12'"),
        (_set(2, "schema_version"), "schema_version", "1 was expected"),
        (
            _set([1.0, 2.0], "regimes", "standard", "depth", "metrics", "cdnv"),
            "regimes/standard/depth/metrics/cdnv",
            "2 values for 5 layers",
        ),
        (
            _set([0.1] * 4, "regimes", "memorize", "epochs", "train_error"),
            "regimes/memorize/epochs/train_error",
            "4 values for 5 snapshots",
        ),
    ],
)
def test_broken_results_fail_with_the_path(fixture_data, mutate, expected_path, expected_text):
    results = copy.deepcopy(fixture_data[0])
    mutate(results)
    with pytest.raises(ResultsError) as info:
        validate_results(results)
    msg = str(info.value)
    assert isinstance(info.value, NcoodError)
    assert f"invalid results at {expected_path}" in msg
    assert expected_text in msg


def test_write_report_refuses_invalid_results(fixture_data, tmp_path):
    results = copy.deepcopy(fixture_data[0])
    results["regimes"]["standard"]["ood"]["msp"]["digits"]["auroc"] = None
    validate_results(results)  # null is allowed (metric not computed) ...
    results["regimes"]["standard"]["ood"]["msp"]["digits"]["auroc"] = "0.9"
    with pytest.raises(ResultsError, match="regimes/standard/ood/msp/digits/auroc"):
        write_report(results, {}, tmp_path)
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------------------
# tables


def _bold_rows(table: T.Table, j: int) -> set[str]:
    return {row[0].text for row in table.rows if row[j].bold}


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("ood", OOD_SETS)
def test_ood_table_marks_the_best_value(fixture_data, regime, ood):
    results, _ = fixture_data
    table = T.ood_table(results, regime, ood)
    assert [row[0].text for row in table.rows] == DETECTORS
    header_to_key = {
        "AUROC (%)": ("auroc", max),
        "FPR@95 (%)": ("fpr95", min),
        "AUPR-In (%)": ("aupr_in", max),
        "AUPR-Out (%)": ("aupr_out", max),
        "FPR@95 (OOD+) (%)": ("fpr95_oodpos", min),
    }
    assert table.headers[1:] == list(header_to_key)
    per_det = results["regimes"][regime]["ood"]
    for j, header in enumerate(table.headers[1:], start=1):
        key, pick = header_to_key[header]
        shown = {d: f"{100 * per_det[d][ood][key]:.2f}" for d in DETECTORS}
        best = pick(float(v) for v in shown.values())
        assert _bold_rows(table, j) == {d for d, v in shown.items() if float(v) == best}
        assert [row[j].text for row in table.rows] == [shown[d] for d in DETECTORS]


def test_best_marking_ties_and_lower_is_better():
    results, _ = make_results(n_id=200, n_ood=100)
    per_det = results["regimes"]["standard"]["ood"]
    for d in DETECTORS:
        per_det[d]["digits"].update(auroc=0.8, fpr95=0.5)
    per_det["vim"]["digits"].update(auroc=0.95, fpr95=0.9)  # best AUROC, worst FPR
    per_det["neco"]["digits"].update(auroc=0.95, fpr95=0.2)  # tied AUROC, best FPR
    per_det["msp"]["digits"]["fpr95"] = 0.200001  # equal to neco at display precision
    table = T.ood_table(results, "standard", "digits")
    assert _bold_rows(table, 1) == {"vim", "neco"}
    assert _bold_rows(table, 2) == {"neco", "msp"}
    md = T.to_markdown(table)
    assert "| vim | **95.00** | 90.00 |" in md
    assert "| neco | **95.00** | **20.00** |" in md
    text = T.to_text(table)
    assert "95.00*" in text and "90.00*" not in text


def test_regime_comparison_and_collapse_tables(fixture_data):
    results, _ = fixture_data
    t = T.regime_comparison_table(results, "digits")
    assert t.headers[1:4] == [
        "AUROC standard",
        "AUROC memorize",
        "ΔAUROC (memorize − standard)",
    ]
    ood = results["regimes"]
    for row in t.rows:
        d = row[0].text
        diff = 100 * (
            ood["memorize"]["ood"][d]["digits"]["auroc"]
            - ood["standard"]["ood"][d]["digits"]["auroc"]
        )
        assert row[3].text == f"{diff:+.2f}"
    fpr_std = {d: ood["standard"]["ood"][d]["digits"]["fpr95"] for d in DETECTORS}
    assert _bold_rows(t, 4) == {min(fpr_std, key=fpr_std.get)}

    c = T.collapse_table(results)
    assert c.headers == ["Metric", "Definition", "standard", "memorize"]
    labels = [row[0].text for row in c.rows]
    for needed in ("NC1", "NC1 (trace)", "CDNV", "NC3", "NC4"):
        assert needed in labels
    assert sum("NC2" in lab for lab in labels) == 6
    nc1_row = c.rows[labels.index("NC1")]
    std, mem = (results["regimes"][r]["collapse"]["nc1"] for r in REGIMES)
    assert nc1_row[2].bold == (std < mem) and nc1_row[3].bold == (mem < std)
    assert nc1_row[2].text == f"{std:.4g}"

    n5 = T.nc5_table(results)
    assert [row[0].text for row in n5.rows] == OOD_SETS
    d = T.depth_auroc_table(results, "standard")
    assert d.headers[2:] == LAYERS
    e = T.epochs_table(results, "memorize")
    assert e.headers[1:] == [f"epoch {k}" for k in (0, 1, 2, 4, 6)]
    assert "zero at epoch 6" in e.note


def test_terminal_summary_is_plain_text_with_every_number(fixture_data):
    results, _ = fixture_data
    text = format_terminal_summary(results)
    assert text.isascii()
    for name in [*DETECTORS, *OOD_SETS, *REGIMES, "NC1", "NC4", "NC5"]:
        assert name in text
    for r in REGIMES:
        for d in DETECTORS:
            for o in OOD_SETS:
                assert f"{100 * results['regimes'][r]['ood'][d][o]['auroc']:.2f}" in text
    full = format_terminal_summary(results, full=True)
    assert full.count("AUPR-In") == len(REGIMES) * len(OOD_SETS)


# ---------------------------------------------------------------------------------------
# findings


def _constant_auroc(results, value=0.8):
    for reg in results["regimes"].values():
        for by_ood in reg["ood"].values():
            for m in by_ood.values():
                m["auroc"] = value


def test_findings_name_the_best_detector():
    results, _ = make_results(n_id=200, n_ood=100)
    _constant_auroc(results, 0.7)
    results["regimes"]["standard"]["ood"]["neco"]["digits"]["auroc"] = 0.9
    results["regimes"]["memorize"]["ood"]["msp"]["texture_crops"]["auroc"] = 0.65 + 0.1
    out = findings(results)
    assert "Best detector on digits (standard): neco, AUROC 90.00%, 20.00 points above" in " ".join(
        out
    )
    assert any(
        s.startswith("Best detector on texture_crops (memorize): msp, AUROC 75.00%") for s in out
    )
    # NC1 ratio computed independently
    std, mem = (results["regimes"][r]["collapse"]["nc1"] for r in REGIMES)
    lo, hi = ("standard", "memorize") if std < mem else ("memorize", "standard")
    ratio = max(std, mem) / min(std, mem)
    assert any(
        f"By NC1, {lo} is more collapsed than {hi}" in s and f"{ratio:.1f}x lower" in s for s in out
    )
    # best AUROC on digits: 90% (standard) vs 70% (memorize)
    assert any("Best AUROC on digits is 20.00 points lower under memorize" in s for s in out)


def test_findings_claim_no_difference_between_equal_values():
    results, _ = make_results(n_id=200, n_ood=100)
    _constant_auroc(results, 0.8)
    results["regimes"]["memorize"] = copy.deepcopy(results["regimes"]["standard"])
    out = findings(results)
    joined = " ".join(out)
    assert out
    assert "points above" not in joined
    assert "more collapsed than" not in joined
    assert "points lower" not in joined and "points higher" not in joined
    assert "NC1 is about equal across regimes" in joined
    for o in OOD_SETS:
        assert f"Best AUROC on {o}: about equal under memorize and standard" in joined
    best = [s for s in out if s.startswith("Best detector")]
    assert len(best) == len(REGIMES) * len(OOD_SETS)
    assert all("about equal" in s for s in best)


def test_findings_hedge_small_differences():
    results, _ = make_results(n_id=200, n_ood=100)
    _constant_auroc(results, 0.8)
    results["regimes"]["standard"]["ood"]["vim"]["digits"]["auroc"] = 0.805  # +0.5 point
    results["regimes"]["memorize"]["ood"]["vim"]["digits"]["auroc"] = 0.8
    out = findings(results)
    s = next(x for x in out if x.startswith("Best detector on digits (standard)"))
    assert (
        s.startswith("Best detector on digits (standard): vim, AUROC 80.50%") and "about equal" in s
    )
    assert any(x.startswith("Best AUROC on digits: about equal") for x in out)


def test_findings_on_missing_parts_do_not_crash(fixture_data):
    out = findings(strip_optional(fixture_data[0]))
    assert out and all("NC1" not in s for s in out)


# ---------------------------------------------------------------------------------------
# HTML


class _DomScan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("src", "href"):
            if k in a:
                self.refs.append(a[k])


def _check_dom(html: str, n_figures: int) -> None:
    scan = _DomScan()
    scan.feed(html)
    order = [i for i in scan.ids if i in (*SECTION_IDS, "conventions")]
    assert order == [*SECTION_IDS, "conventions"]
    assert len(scan.imgs) == n_figures
    for src in scan.imgs:
        assert src.startswith("data:image/png;base64,")
        _is_png(base64.b64decode(src.split(",", 1)[1], validate=True))
    # self-contained: only in-page anchors and data URIs
    assert all(r.startswith(("#", "data:")) for r in scan.refs), scan.refs
    assert not ({"script", "link", "iframe"} & scan.tags)


def test_html_is_self_contained_ordered_and_escaped(report):
    out, paths = report
    html = paths["html"].read_text()
    _check_dom(html, len(EXPECTED_FIGURES))
    assert "&lt;test &amp; escape&gt;" in html and "<test & escape>" not in html
    assert "<style>" in html and "http://" not in html.split("</style>")[0]
    assert html.count("<table") >= len(REGIMES) * len(OOD_SETS) + len(OOD_SETS) + 2
    assert "<strong>" in html
    md = paths["markdown"].read_text()
    assert "**" in md and "\\<test & escape\\>" in md


def test_missing_optional_parts_render_as_notes(fixture_data, tmp_path):
    results = strip_optional(fixture_data[0])
    paths = write_report(results, {}, tmp_path)
    html = paths["html"].read_text()
    _check_dom(html, 2)  # training curves (empty panels) and the regime comparison
    assert html.count("not computed") >= 6
    assert "could not be drawn" not in html
    assert "Raw scores of standard were not saved (scores.npz): not computed." in html
    # one regime without depth/epochs, the other with depth but no per-layer detectors
    results = copy.deepcopy(fixture_data[0])
    for key in ("depth", "epochs"):
        del results["regimes"]["memorize"][key]
    del results["regimes"]["standard"]["depth"]["ood_auroc"]
    for reg in results["regimes"].values():
        del reg["collapse"]
    paths = write_report(results, None, tmp_path / "partial")
    html = paths["html"].read_text()
    assert "Per-layer analysis of memorize: not computed." in html
    assert "Collapse across training of memorize: not computed." in html
    assert "Detector AUROC per layer of standard: not computed." in html
    assert "Neural collapse was not computed in this run." in html
    assert "could not be drawn" not in html
    _check_dom(html, 4)  # training, regime comparison, standard depth and epochs


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
]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not on PATH (apt-get install chromium; .ci/run installs it)",
)
def test_report_opens_in_headless_chromium(report, tmp_path):
    out, paths = report
    url = paths["html"].resolve().as_uri()
    base = [CHROMIUM, *CHROMIUM_FLAGS]
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<html" in dom
    _check_dom(dom, len(EXPECTED_FIGURES))
    shot = tmp_path / "first_screen.png"
    subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--window-size=1366,900",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    w, h = _is_png(shot.read_bytes())
    assert (w, h) == (1366, 900)
    with Image.open(shot) as im:  # not a blank page: text and cards drawn
        assert len(np.unique(np.asarray(im.convert("L")))) > 20
    keep = os.environ.get("NCOOD_REPORT_SCREENSHOT")
    if keep:  # keep the screenshot for a person to look at
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)


def test_section_ids_are_stable():
    assert SECTION_IDS == (
        "setup",
        "training",
        "ood",
        "scores",
        "roc",
        "collapse",
        "nc5",
        "depth",
        "epochs",
        "findings",
    )
    assert all(re.fullmatch(r"[a-z0-9]+", s) for s in SECTION_IDS)


def test_integer_epochs_and_across_training_block_are_accepted(fixture_data):
    """results_schema.md lists "epochs" twice; the integer form plus across_training works."""
    results = copy.deepcopy(fixture_data[0])
    reg = results["regimes"]["standard"]
    reg["across_training"] = reg.pop("epochs")
    reg["epochs"] = 6
    validate_results(results)
    assert T.training_epochs(reg) == 6
    table = T.epochs_table(results, "standard")
    assert table is not None and table.headers[-1] == "epoch 6"
    reg["epochs"] = "6"
    with pytest.raises(ResultsError, match="regimes/standard/epochs"):
        validate_results(results)


def test_numpy_values_are_accepted(fixture_data):
    results = copy.deepcopy(fixture_data[0])
    results["data"]["id"]["n_train"] = np.int64(12000)
    results["regimes"]["standard"]["ood"]["msp"]["digits"]["auroc"] = np.float32(0.75)
    results["regimes"]["standard"]["collapse"]["mean_distances"] = np.asarray(
        results["regimes"]["standard"]["collapse"]["mean_distances"]
    )
    validate_results(results)
    assert T.pct(float(np.float32(0.75))) == "75.00"


def test_offdiagonal_cosines_become_one_value_per_pair():
    from ncood.report.render import _upper_pairs

    rng = np.random.default_rng(1)
    g = rng.normal(size=(5, 5))
    g = g + g.T
    offdiag = g[~np.eye(5, dtype=bool)]
    np.testing.assert_array_equal(_upper_pairs(offdiag.tolist(), 5), g[np.triu_indices(5, 1)])
    shuffled = rng.permutation(offdiag)
    assert _upper_pairs(shuffled.tolist(), 5).size == 20  # unknown order: all values kept
