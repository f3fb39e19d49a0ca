"""SIGKILL during extraction never leaves a cache entry that a later run would trust."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ncood.errors import CheckpointError
from ncood.types import FeatureSet


@pytest.mark.slow
def test_sigkill_during_extraction_then_rerun_gives_exact_features(fmnist_run, tmp_path):
    from ncood.extract import extract_checkpoint

    cache = tmp_path / "cache"
    args = [
        sys.executable, "-m", "ncood.cli.main", "-q", "extract",
        "--checkpoint", str(fmnist_run.checkpoint), "--out", str(tmp_path / "out"),
        "--cache", str(cache), "--ood", "digits", "--max-train", "3000",
        "--max-test", "1000", "--max-ood", "600", "--batch-size", "64",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # kill as soon as the first cache entry starts being written
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.exists() and any(cache.rglob("*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # whatever is on disk is either complete and consistent or refused on load
    for entry in cache.iterdir() if cache.exists() else []:
        if entry.is_dir():
            try:
                fs = FeatureSet.load(entry)
            except CheckpointError:
                continue
            assert fs.features.shape[0] == fs.logits.shape[0]
    assert not (tmp_path / "out" / "extract.json").exists()  # no half-written output dir

    # a re-run through the same cache equals a clean extraction without any cache
    common = dict(
        ood=["digits"], max_train_samples=3000, max_test_samples=1000,
        max_ood_samples=600, progress=False,
    )  # fmt: skip
    again = extract_checkpoint(fmnist_run.checkpoint, cache_dir=cache, **common)
    clean = extract_checkpoint(fmnist_run.checkpoint, cache_dir=None, **common)
    for a, b in [(again.train, clean.train), (again.test, clean.test)] + [
        (again.ood["digits"], clean.ood["digits"])
    ]:
        np.testing.assert_allclose(np.asarray(a.features), b.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(a.logits), b.logits, rtol=1e-5, atol=1e-5)
