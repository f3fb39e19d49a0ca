"""torch.distributed support: sharding, all-reduced statistics, sharded extraction, DDP.

The slow tests start one 2-process gloo job on the CPU (``torch.multiprocessing.spawn``,
the environment torchrun would set) that runs every distributed step once and leaves its
results in files; each test then checks one of them against a single-process
computation made here.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from ncood.collapse.stats import ClassStats
from ncood.errors import CheckpointError, ConfigError
from ncood.types import FeatureSet, load_feature_dir

WORLD = 2
C, D = 5, 16
DETECTORS = {"mahalanobis": {}, "vim": {"dim": 8}, "neco": {"dim": 6}}


# ---------------------------------------------------------------------- no processes
@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_bounds_tile_range_and_balance(n, world):
    from ncood.distributed import shard_bounds

    bounds = [shard_bounds(n, r, world) for r in range(world)]
    # independent formulation: numpy's array_split gives contiguous balanced parts
    expected = [
        (int(p[0]), int(p[-1]) + 1) if p.size else None for p in np.array_split(np.arange(n), world)
    ]
    pos = 0
    for (lo, hi), exp in zip(bounds, expected, strict=True):
        assert lo == pos and hi >= lo
        if exp is not None:
            assert (lo, hi) == exp
        pos = hi
    assert pos == n
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_rejects_bad_arguments():
    from ncood.distributed import shard_bounds

    for args in [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)]:
        with pytest.raises(ConfigError, match="shard_bounds"):
            shard_bounds(*args)


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_sampler_indices_match_distributed_sampler(n, world):
    from ncood.distributed import sampler_indices

    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for rank in range(world):
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        expected = order[list(ref)]
        assert torch.equal(sampler_indices(order, rank, world), expected)


def test_single_process_collectives_are_identities():
    from ncood.distributed import (
        all_gather_rows,
        all_reduce_stats,
        all_reduce_sum,
        class_stats_distributed,
        get_world_size,
        init_distributed,
        is_main,
    )

    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
    assert get_world_size() == 1 and is_main()
    x = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(all_reduce_sum(x), x) and np.array_equal(all_gather_rows(x), x)
    z, y = _synthetic(40)
    s = class_stats_distributed(z, y, C)
    ref = ClassStats.from_features(z, y, C)
    np.testing.assert_allclose(s.within_cov(), ref.within_cov(), rtol=1e-12, atol=1e-12)
    assert np.array_equal(all_reduce_stats(s).to_vector(), s.to_vector())


def _fake_shard(directory: Path, rank: int, world: int, lo: int, hi: int, total: int):
    rng = np.random.default_rng(rank)
    fs = FeatureSet(
        features=rng.normal(size=(hi - lo, 3)).astype(np.float32),
        logits=rng.normal(size=(hi - lo, 2)).astype(np.float32),
        labels=np.arange(lo, hi) % 2,
        name="toy/train",
        meta={
            "subset": {
                "n": None,
                "shard": {"rank": rank, "world_size": world, "lo": lo, "hi": hi, "n_total": total},
            }
        },
        layers={
            "b": rng.normal(size=(hi - lo, 4)).astype(np.float32),
            "a": rng.normal(size=(hi - lo, 2)).astype(np.float32),
        },
    )
    fs.save(directory / f"shard_{rank:05d}")
    return fs


def test_sharded_feature_set_loads_as_one_and_detects_damage(tmp_path):
    from ncood.distributed import load_shards

    d = tmp_path / "train"
    parts = [
        _fake_shard(d, 0, 3, 0, 4, 9),
        _fake_shard(d, 1, 3, 4, 7, 9),
        _fake_shard(d, 2, 3, 7, 9, 9),
    ]
    fs = load_shards(d)
    assert len(fs) == 9 and list(fs.layers) == ["b", "a"]  # depth order kept
    assert fs.meta == {"subset": {"n": None}}
    np.testing.assert_array_equal(fs.features, np.concatenate([p.features for p in parts]))
    np.testing.assert_array_equal(fs.layers["a"], np.concatenate([p.layers["a"] for p in parts]))
    np.testing.assert_array_equal(fs.labels, np.arange(9) % 2)
    with pytest.raises(CheckpointError, match="no meta.json"):
        FeatureSet.load(d)  # the plain reader knows nothing of shards

    (d / "shard_00001" / "meta.json").unlink()  # an incomplete shard
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_shards(d)
    import shutil

    shutil.rmtree(d / "shard_00001")
    with pytest.raises(CheckpointError, match=r"missing \['shard_00001'\]"):
        load_shards(d)
    _fake_shard(d, 1, 3, 4, 6, 9)  # rows 6..7 are lost
    with pytest.raises(CheckpointError, match="does not continue"):
        load_shards(d)


def test_merged_shards_are_a_plain_feature_set(tmp_path):
    from ncood.distributed import merge_shards

    d = tmp_path / "train"
    parts = [_fake_shard(d, 0, 2, 0, 5, 8), _fake_shard(d, 1, 2, 5, 8, 8)]
    merged = merge_shards(d)
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == []  # shards removed
    fs = FeatureSet.load(d)  # the plain reader, like any extraction
    assert fs.meta == {"subset": {"n": None}} and list(fs.layers) == ["b", "a"]
    np.testing.assert_array_equal(fs.features, np.concatenate([p.features for p in parts]))
    np.testing.assert_array_equal(fs.logits, np.concatenate([p.logits for p in parts]))
    np.testing.assert_array_equal(fs.layers["b"], np.concatenate([p.layers["b"] for p in parts]))
    np.testing.assert_array_equal(merged.labels, np.arange(8) % 2)


# ---------------------------------------------------------------------- the 2-process job
def _synthetic(n: int, seed: int = 0):
    """Class-structured features with a large common offset (post-ReLU-like)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=n)
    means = rng.normal(scale=3.0, size=(C, D))
    z = 50.0 + means[y] + rng.normal(size=(n, D)) * rng.uniform(0.5, 2.0, size=D)
    return z.astype(np.float32), y


def _head(seed: int = 1):
    from ncood.types import LinearHead

    rng = np.random.default_rng(seed)
    return LinearHead(rng.normal(size=(C, D)), rng.normal(size=C))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_CFG = {
    "model": "resnet_narrow",
    "regime": "standard",
    "epochs": 2,
    "batch_size": 32,
    "seed": 0,
    "precision": "fp32",
    "device": "cpu",
    "snapshots": [0, 1],
    "num_threads": 1,
}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from ncood.detectors import create_detector
    from ncood.distributed import (
        all_gather_rows,
        barrier,
        broadcast_array,
        class_stats_distributed,
        collapse_metrics_distributed,
        destroy_distributed,
        fit_detector_distributed,
        init_distributed,
        shard_bounds,
    )
    from ncood.extract import extract_checkpoint
    from ncood.train import Callback, train

    root = Path(root)
    ctx = init_distributed("cpu", timeout=timedelta(seconds=120))
    assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world, "gloo")

    # statistics and detectors from uneven shards
    z, y = _synthetic(301)
    test_z, _ = _synthetic(50, seed=7)
    lo, hi = shard_bounds(len(z), rank, world)
    stats = class_stats_distributed(z[lo:hi], y[lo:hi], C)
    gathered = all_gather_rows(z[lo:hi])
    b = broadcast_array(np.arange(6, dtype=np.int32).reshape(2, 3) if rank == 0 else None)
    scores = {}
    head = _head()
    for name, params in DETECTORS.items():
        det = fit_detector_distributed(create_detector(name, **params), z[lo:hi], y[lo:hi], head)
        scores[name] = det.score(test_z, head.logits(test_z))
    collapse = collapse_metrics_distributed(z[lo:hi], y[lo:hi], head, stats=stats)
    (root / f"collapse_{rank}.json").write_text(
        json.dumps({k: v for k, v in collapse.items() if isinstance(v, float)})
    )
    np.savez(
        root / f"stats_{rank}.npz",
        vector=stats.to_vector(),
        shift=stats.shift,
        gathered=gathered,
        broadcast=b,
        **{f"score_{k}": v for k, v in scores.items()},
    )

    # sharded extraction
    extract_checkpoint(
        root / "tiny.pt",
        id_dataset=f"npz:{root / 'data.npz'}",
        ood=[f"npz:{root / 'ood.npz'}"],
        out=root / "dist_features",
        progress=False,
        device="cpu",
        batch_size=40,
    )

    # DDP training: every rank records its final weights
    class Keep(Callback):
        def __init__(self, tag):
            self.tag = tag

        def on_train_end(self, state):
            torch.save(
                {k: v.detach().clone() for k, v in state.model.state_dict().items()},
                root / f"weights_{self.tag}_{state.rank}.pt",
            )

    class StopAfterFirst(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 1:
                raise KeyboardInterrupt

    cfg = dict(TRAIN_CFG, dataset=f"npz:{root / 'data.npz'}")
    result = train(cfg, root / "run", progress=False, callbacks=[Keep("run")])
    assert result.checkpoint.exists()  # rank 1 too: rank 0 wrote it before the barrier
    try:
        train(cfg, root / "resumed", progress=False, callbacks=[StopAfterFirst()])
    except KeyboardInterrupt:
        pass
    barrier()
    train(cfg, root / "resumed", resume=True, progress=False, callbacks=[Keep("resumed")])
    barrier()
    destroy_distributed()


def _make_inputs(root: Path) -> None:
    from ncood.models import create_model
    from ncood.train import save_checkpoint

    rng = np.random.default_rng(0)
    ytr, yte = np.arange(192) % 4, np.arange(70) % 4
    base = rng.integers(0, 120, size=(4, 12, 12))
    np.savez(
        root / "data.npz",
        train_images=(base[ytr] + rng.integers(0, 120, size=(192, 12, 12))).astype(np.uint8),
        train_labels=ytr,
        test_images=(base[yte] + rng.integers(0, 120, size=(70, 12, 12))).astype(np.uint8),
        test_labels=yte,
    )
    np.savez(root / "ood.npz", images=rng.integers(0, 256, size=(33, 12, 12)).astype(np.uint8))
    torch.manual_seed(1)
    model = create_model("resnet_narrow", num_classes=4, in_channels=1)
    save_checkpoint(
        root / "tiny.pt",
        model=model,
        model_name="resnet_narrow",
        model_kwargs={"num_classes": 4, "in_channels": 1},
        input_spec={"size": 12, "channels": 1, "mean": [0.4], "std": [0.25]},
        dataset={"name": "toy", "classes": [str(i) for i in range(4)]},
        regime="standard",
        config={"seed": 0},
        epoch=0,
        history=[],
    )


@pytest.fixture(scope="module")
def dist_job(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    _make_inputs(root)
    mp.spawn(_worker, args=(WORLD, _free_port(), str(root)), nprocs=WORLD, join=True)
    return root


@pytest.mark.slow
def test_all_reduced_stats_and_detectors_equal_single_process(dist_job):
    from ncood.detectors import create_detector

    z, y = _synthetic(301)
    test_z, _ = _synthetic(50, seed=7)
    r0, r1 = (np.load(dist_job / f"stats_{r}.npz") for r in range(WORLD))
    assert np.array_equal(r0["vector"], r1["vector"])  # every rank holds the same result
    dist_stats = ClassStats(C, D, r0["shift"]).load_vector(r0["vector"])
    ref = ClassStats.from_features(z, y, C)
    same_shift = ref.rebased(dist_stats.shift)
    assert np.array_equal(dist_stats.counts, ref.counts)
    for a, b in [
        (dist_stats.sums, same_shift.sums),
        (dist_stats.second, same_shift.second),
        (dist_stats.sq_norms, same_shift.sq_norms),
        (dist_stats.means, ref.means),
        (dist_stats.within_cov(), ref.within_cov()),
        (dist_stats.total_cov(), ref.total_cov()),
    ]:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    # a second, independent formulation: numpy's covariance of the full float64 data
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(
        dist_stats.total_cov(), np.cov(z64.T, bias=True), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_array_equal(r0["gathered"], z)
    np.testing.assert_array_equal(r1["broadcast"], np.arange(6).reshape(2, 3))
    head = _head()
    for name, params in DETECTORS.items():
        single = create_detector(name, **params).fit(z, y, head)
        expected = single.score(test_z, head.logits(test_z))
        for r in (r0, r1):
            np.testing.assert_allclose(r[f"score_{name}"], expected, rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_collapse_metrics_from_all_reduced_stats_equal_single_process(dist_job):
    from ncood.collapse import collapse_metrics

    z, y = _synthetic(301)
    want = collapse_metrics(z, y, _head())
    for r in range(WORLD):
        got = json.loads((dist_job / f"collapse_{r}.json").read_text())
        assert {"nc1", "nc1_trace", "cdnv", "nc3", "nc4", "ncc_acc"} <= set(got)
        for k, v in got.items():
            np.testing.assert_allclose(v, want[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.slow
def test_sharded_extraction_reads_back_as_the_single_process_one(dist_job, tmp_path):
    from ncood.extract import extract_checkpoint

    root = dist_job
    for split in ("train", "test", "ood/ood"):  # npz:.../ood.npz is named "ood"
        d = root / "dist_features" / split
        assert (d / "meta.json").is_file(), split  # merged into the plain layout ...
        assert not list(d.glob("shard_*")), split  # ... and the shards removed
    meta = json.loads((root / "dist_features" / "extract.json").read_text())
    assert meta["shards"] == WORLD
    dist_fd = load_feature_dir(root / "dist_features")
    single = extract_checkpoint(
        root / "tiny.pt",
        id_dataset=f"npz:{root / 'data.npz'}",
        ood=[f"npz:{root / 'ood.npz'}"],
        out=tmp_path / "single",
        progress=False,
        device="cpu",
        batch_size=64,
    )
    pairs = [(dist_fd.train, single.train), (dist_fd.test, single.test)]
    pairs += [(dist_fd.ood[k], single.ood[k]) for k in single.ood]
    for got, want in pairs:
        assert len(got) == len(want) and got.name == want.name and got.meta == want.meta
        assert list(got.layers) == list(want.layers)
        if want.labels is None:
            assert got.labels is None
        else:
            np.testing.assert_array_equal(got.labels, want.labels)
        # other batch compositions may round float32 convolutions differently
        np.testing.assert_allclose(got.features, want.features, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        for k in want.layers:
            np.testing.assert_allclose(got.layers[k], want.layers[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dist_fd.head.weight, single.head.weight)
    assert {k: v for k, v in dist_fd.meta.items() if k != "shards"} == {
        **single.meta,
        "ood": list(single.ood),
    }


@pytest.mark.slow
def test_ddp_training_gives_identical_weights_and_a_loadable_checkpoint(dist_job):
    from ncood.train import load_checkpoint, model_from_checkpoint

    w0 = torch.load(dist_job / "weights_run_0.pt", weights_only=True)
    w1 = torch.load(dist_job / "weights_run_1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    ckpt = load_checkpoint(dist_job / "run" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, w0[k]), k
    model, _ = model_from_checkpoint(dist_job / "run" / "last.pt")
    init = load_checkpoint(dist_job / "run" / "snapshots" / "epoch_0000.pt")["state_dict"]
    changed = [k for k in init if k.endswith("weight") and not torch.equal(init[k], w0[k])]
    assert changed  # the optimiser moved the weights
    cfg = json.loads((dist_job / "run" / "train_config.json").read_text())
    assert cfg["world_size"] == WORLD
    # 192 images, 2 ranks x 16 per step -> 6 steps per epoch
    assert ckpt["history"][0]["images_per_s"] > 0
    assert ckpt["scheduler"]["last_epoch"] == 12
    assert sorted(p.name for p in (dist_job / "run").glob("*.json")) == [
        "history.json",
        "train_config.json",
    ]
    assert model.num_classes == 4


@pytest.mark.slow
def test_ddp_resume_equals_uninterrupted(dist_job):
    from ncood.train import load_checkpoint

    want = torch.load(dist_job / "weights_run_0.pt", weights_only=True)
    for rank in range(WORLD):
        got = torch.load(dist_job / f"weights_resumed_{rank}.pt", weights_only=True)
        for k in want:
            assert torch.equal(got[k], want[k]), (rank, k)
    a = load_checkpoint(dist_job / "resumed" / "last.pt")["history"]
    b = load_checkpoint(dist_job / "run" / "last.pt")["history"]
    for ra, rb in zip(a, b, strict=True):
        for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert ra[k] == rb[k], k
