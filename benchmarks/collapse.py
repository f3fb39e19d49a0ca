"""Speed and scale of the neural-collapse metrics.

Run (from the repository root):

    .venv/bin/python benchmarks/collapse.py                  # both parts, full size
    .venv/bin/python benchmarks/collapse.py --part speed     # 50,000 x 512, C = 100
    .venv/bin/python benchmarks/collapse.py --part stream    # 1,000,000 x 2,048 from a memmap
    .venv/bin/python benchmarks/collapse.py --part stream --stream-n 200000   # smaller
    .venv/bin/python benchmarks/collapse.py --blas-threads 1  # on a loaded shared machine

Part 1 (speed): every metric of ``collapse_metrics`` on 50,000 x 512 float32 features with
C = 100 classes (target: under 2 s on 2 cores), against a naive baseline in the same run
(per-class covariance loops, float32 centring, a full pseudo-inverse of S_B, Python loops
over class pairs, as common student code does). The naive NC1 is printed beside ours: its
float32 centring plus full pseudo-inverse inflate NC1 by orders of magnitude.

Part 2 (stream): 1,000,000 x 2,048 float32 features (8.2 GB) are written chunk by chunk to a
file in a temporary directory, then streamed back in chunks, each chunk its own short-lived
``np.memmap`` (so mapped pages leave the process when the chunk is done), through
``ClassStats`` (pass 1) and the nearest-class-mean / NC4 pass (pass 2). Peak resident memory
(``ru_maxrss``) is printed against the size of the features. Needs ~8.2 GB free disk.

Conditions matter: the 1-minute load average is printed with every timing. On a shared
machine whose cores are oversubscribed, OpenBLAS's spinning worker threads can make
float64 matrix products several times slower than one thread; ``--blas-threads 1``
(threadpoolctl) shows the single-thread numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from ncood.collapse import ClassStats, collapse_metrics
from ncood.collapse.metrics import decision_metrics, metrics_from_stats
from ncood.types import LinearHead


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def synthetic(n: int, d: int, c: int, seed: int = 0):
    """Clustered post-ReLU-like features with a large common offset, float32."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    z = mu[y] + 2.0 * rng.standard_normal((n, d), dtype=np.float32) + 10.0
    head = LinearHead(mu.astype(np.float64), -(mu.astype(np.float64) @ np.full(d, 10.0)))
    return z, y, head


def naive_metrics(z: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict:
    """What typical student code does: loops, float32 centring, full pseudo-inverse."""
    c = w.shape[0]
    n, d = z.shape
    means = np.zeros((c, d), dtype=z.dtype)
    s_w = np.zeros((d, d), dtype=z.dtype)
    variances = np.zeros(c, dtype=z.dtype)
    for k in range(c):  # per-class covariance loop
        zk = z[y == k]
        means[k] = zk.mean(axis=0)
        dev = zk - means[k]
        s_w += dev.T @ dev
        variances[k] = np.mean(np.sum(dev**2, axis=1))
    s_w /= n
    mu_g = means.mean(axis=0)
    m = means - mu_g
    s_b = m.T @ m / c
    nc1 = float(np.trace(s_w @ np.linalg.pinv(s_b)) / c)
    cdnv, cos_m, cos_w = [], [], []
    for i in range(c):  # Python loops over class pairs
        for j in range(i + 1, c):
            cdnv.append((variances[i] + variances[j]) / (2 * np.sum((means[i] - means[j]) ** 2)))
            cos_m.append(m[i] @ m[j] / (np.linalg.norm(m[i]) * np.linalg.norm(m[j])))
            cos_w.append(w[i] @ w[j] / (np.linalg.norm(w[i]) * np.linalg.norm(w[j])))
    norms = np.linalg.norm(m, axis=1)
    nc3 = float(np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2))
    nearest = np.empty(n, dtype=np.int64)
    for start in range(0, n, 4096):  # full distances per batch
        zb = z[start : start + 4096]
        nearest[start : start + 4096] = np.argmin(
            ((zb[:, None, :] - means[None, :, :]) ** 2).sum(axis=2), axis=1
        )
    pred = np.argmax(z @ w.T.astype(z.dtype) + b.astype(z.dtype), axis=1)
    return {
        "nc1": nc1,
        "nc1_trace": float(np.trace(s_w) / np.trace(s_b)),
        "cdnv": float(np.mean(cdnv)),
        "nc2_equinorm_means": float(norms.std() / norms.mean()),
        "nc2_equiangular_means": float(np.std(cos_m)),
        "nc2_equiangular_weights": float(np.std(cos_w)),
        "nc3": nc3,
        "nc4": float(np.mean(pred != nearest)),
    }


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def part_speed(repeats: int) -> None:
    n, d, c = 50_000, 512, 100
    z, y, head = synthetic(n, d, c)
    print(f"== speed: {n:,} x {d} float32, C = {c} ({load()}) ==")
    collapse_metrics(z[:2000], y[:2000], head)  # warm-up (BLAS threads, imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = collapse_metrics(z, y, head)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    naive = naive_metrics(z, y, head.weight, head.bias)
    t_naive = time.perf_counter() - t0
    best = min(times)
    print(
        f"ncood collapse_metrics (all metrics): best {best:.3f} s, median "
        f"{np.median(times):.3f} s over {repeats} runs   (target < 2 s; {load()})"
    )
    print(
        f"naive baseline (loops, float32, full pinv):  {t_naive:.3f} s   "
        f"-> ratio {t_naive / best:.1f}x"
    )
    print(f"{'metric':<26}{'ncood (float64)':>18}{'naive (float32)':>18}")
    for key in naive:
        print(f"{key:<26}{ours[key]:>18.6g}{naive[key]:>18.6g}")


def part_stream(n: int, d: int, c: int, chunk: int, keep: bool) -> None:
    size_gb = n * d * 4 / 1e9
    print(
        f"== stream: {n:,} x {d:,} float32 = {size_gb:.2f} GB, C = {c}, chunks of {chunk:,} "
        f"({load()}) =="
    )
    rng = np.random.default_rng(1)
    mu = rng.standard_normal((c, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    tmp = tempfile.mkdtemp(prefix="ncood_bench_")
    path = Path(tmp) / "features.f32"
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as fh:  # generated chunk by chunk: never all in memory
            for start in range(0, n, chunk):
                yb = labels[start : start + chunk]
                zb = mu[yb] + 2.0 * rng.standard_normal((yb.size, d), dtype=np.float32) + 10.0
                fh.write(zb.tobytes())
        t_gen = time.perf_counter() - t0
        print(
            f"generated and wrote {path.stat().st_size / 1e9:.2f} GB in {t_gen:.1f} s "
            f"(peak RSS so far {peak_rss_mb():.0f} MB)"
        )

        def batches():
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                mm = np.memmap(
                    path, dtype=np.float32, mode="r", offset=start * d * 4, shape=(rows, d)
                )
                yield mm, labels[start : start + rows]
                del mm  # unmap: its pages no longer count in this process's RSS

        head = LinearHead(mu.astype(np.float64), -(mu.astype(np.float64) @ np.full(d, 10.0)))
        t0 = time.perf_counter()
        stats = ClassStats.from_batches(batches(), c, d)
        t_stats = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = metrics_from_stats(stats, head)
        t_metrics = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.update(decision_metrics(batches(), stats, head))
        t_pass2 = time.perf_counter() - t0
        rss = peak_rss_mb()
        print(
            f"pass 1 ClassStats (float64, D x D second moment): {t_stats:.1f} s "
            f"({n / t_stats:,.0f} rows/s)"
        )
        print(f"metrics from stats (SVD of M, S_W):               {t_metrics:.2f} s")
        print(f"pass 2 NC4 / NCC accuracy:                        {t_pass2:.1f} s ({load()})")
        print(
            f"peak RSS {rss:,.0f} MB vs features {size_gb * 1000:,.0f} MB "
            f"({100 * rss / (size_gb * 1000):.1f}%)"
        )
        # isotropic noise of std 2: Tr(S_W) ~ 4 D (a check that the stream was read whole)
        print(
            f"nc1 {m['nc1']:.5g}  nc1_trace {m['nc1_trace']:.5g} (Tr S_W = "
            f"{m['nc1_trace'] * np.sum(m['mean_norms'] ** 2) / c:.1f}, expected ~{4 * d})  "
            f"cdnv {m['cdnv']:.4g}  nc4 {m['nc4']:.4g}  ncc_acc {m['ncc_acc']:.4f}  n {m['n']:,}"
        )
    finally:
        if not keep:
            path.unlink(missing_ok=True)
            os.rmdir(tmp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("speed", "stream", "all"), default="all")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stream-n", type=int, default=1_000_000)
    p.add_argument("--stream-dim", type=int, default=2048)
    p.add_argument("--stream-classes", type=int, default=100)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--keep", action="store_true", help="keep the temporary features file")
    p.add_argument("--blas-threads", type=int, default=None, help="limit BLAS threads")
    args = p.parse_args()
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=args.blas_threads):
        blas = ", ".join(
            f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info()
        )
        print(
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"{os.cpu_count()} CPU(s) [{platform.processor() or platform.machine()}], {blas}"
        )
        if args.part in ("speed", "all"):
            part_speed(args.repeats)
        if args.part in ("stream", "all"):
            part_stream(args.stream_n, args.stream_dim, args.stream_classes, args.chunk, args.keep)


if __name__ == "__main__":
    main()
