"""Bootstrap intervals: vectorised replicates vs a plain loop over replicates.

    .venv/bin/python benchmarks/bootstrap.py                  # 10k + 10k, B = 1000, loop B = 200
    .venv/bin/python benchmarks/bootstrap.py --loop-boot 1000 # the loop at full B (~10 s)
    .venv/bin/python benchmarks/bootstrap.py --ties           # scores rounded to 2 decimals

One (detector, OOD set): 10,000 ID scores ~ N(1, 1) and 10,000 OOD scores ~ N(0, 1).
``ncood.metrics.bootstrap_replicates`` computes all five metrics (auroc, aupr_in,
aupr_out, fpr95, fpr95_oodpos) for B replicates at once; the plain loop draws the same
indices replicate by replicate from ``bootstrap_generators(seed)`` and calls
``ood_metrics`` (one sort per replicate, the fastest loop the module allows). The loop
runs ``--loop-boot`` replicates and its time is scaled to B; the values of those
replicates are compared with the vectorised ones (max abs difference). Times are the
best of ``--repeat`` runs, wall clock and process CPU time (the machine may be shared:
CPU time is the figure that does not depend on other processes). Target (issue 11):
at most 1 s for B = 1000 at 10k + 10k on 2 cores. Also times ``bootstrap_ood_metrics``
(point estimate + percentile intervals), ``paired_auroc_difference`` and
``spearman_ci`` on 200 points.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from ncood.metrics import (
    METRIC_NAMES,
    bootstrap_generators,
    bootstrap_ood_metrics,
    bootstrap_replicates,
    ood_metrics,
    paired_auroc_difference,
    spearman_ci,
)


def _best(fn, repeat: int) -> tuple[float, float, object]:
    """(best wall s, best CPU s, last result) over ``repeat`` runs."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def _loop(id_s: np.ndarray, ood_s: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    g_id, g_ood = bootstrap_generators(seed)
    out = {k: np.empty(n_boot) for k in METRIC_NAMES}
    for r in range(n_boot):
        i = g_id.integers(0, id_s.size, size=id_s.size)
        o = g_ood.integers(0, ood_s.size, size=ood_s.size)
        for k, v in ood_metrics(id_s[i], ood_s[o]).items():
            out[k][r] = v
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-id", type=int, default=10_000)
    ap.add_argument("--n-ood", type=int, default=10_000)
    ap.add_argument("--boot", type=int, default=1000, help="replicates B (vectorised)")
    ap.add_argument("--loop-boot", type=int, default=200, help="replicates run by the loop")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is kept")
    ap.add_argument("--ties", action="store_true", help="round scores to 2 decimals")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    id_s, ood_s = rng.normal(1.0, 1.0, args.n_id), rng.normal(0.0, 1.0, args.n_ood)
    if args.ties:
        id_s, ood_s = np.round(id_s, 2), np.round(ood_s, 2)
    n_distinct = np.unique(np.r_[id_s, ood_s]).size
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"{_cpu_name()}, {os.cpu_count()} cores, load average {load[0]:.2f}; "
        f"numpy {np.__version__}, Python {platform.python_version()}"
    )
    print(
        f"{args.n_id:,} ID + {args.n_ood:,} OOD scores ({n_distinct:,} distinct), "
        f"B = {args.boot}, metrics: {', '.join(METRIC_NAMES)}"
    )

    B, L = args.boot, min(args.loop_boot, args.boot)
    vw, vc, vec = _best(lambda: bootstrap_replicates(id_s, ood_s, n_boot=B, seed=1), args.repeat)
    lw, lc, loop = _best(lambda: _loop(id_s, ood_s, L, seed=1), 1)
    diff = max(float(np.max(np.abs(vec[k][:L] - loop[k]))) for k in METRIC_NAMES)
    lw_b, lc_b = lw * B / L, lc * B / L
    scaled = f" (ran {L}, scaled x{B / L:g})" if L < B else ""
    print(f"vectorised  B={B}: {vw:7.3f} s wall  {vc:7.3f} s CPU")
    print(f"plain loop  B={B}: {lw_b:7.3f} s wall  {lc_b:7.3f} s CPU{scaled}")
    print(f"ratio loop / vectorised: {lw_b / vw:.1f}x wall, {lc_b / vc:.1f}x CPU")
    print(f"max |vectorised - loop| over {L} replicates x 5 metrics: {diff:.2e}")

    iw, ic, ivs = _best(lambda: bootstrap_ood_metrics(id_s, ood_s, n_boot=B), args.repeat)
    print(f"bootstrap_ood_metrics (estimate + 95% intervals): {iw:.3f} s wall, {ic:.3f} s CPU")
    for k, (v, lo, hi) in ivs.items():
        print(f"  {k:13s} {v:.4f}  [{lo:.4f}, {hi:.4f}]")

    id_b, ood_b = id_s + rng.normal(0, 0.5, id_s.size), ood_s + rng.normal(0, 0.5, ood_s.size)
    pw, pc, p = _best(
        lambda: paired_auroc_difference(id_s, ood_s, id_b, ood_b, n_boot=B), args.repeat
    )
    print(
        f"paired_auroc_difference (A - noisier A): {p.value:+.4f} [{p.lo:+.4f}, {p.hi:+.4f}], "
        f"{pw:.3f} s wall, {pc:.3f} s CPU"
    )
    x = rng.normal(size=200)
    y = np.round(x + rng.normal(size=200), 1)
    sw, sc, s = _best(lambda: spearman_ci(x, y, n_boot=B), args.repeat)
    print(
        f"spearman_ci (200 points): {s.value:.4f} [{s.lo:.4f}, {s.hi:.4f}], "
        f"{sw:.3f} s wall, {sc:.3f} s CPU"
    )


if __name__ == "__main__":
    main()
