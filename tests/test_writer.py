"""Attribution shards: atomic, keyed by dataset index, resumable, no duplicates."""
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fex.blackbox import BlackBox
from fex.errors import DataError
from fex.module import ExplainerModule
from fex.writer import (AttributionWriter, clean_tmp, finished_indices, read_shards, shard_files,
                        write_shard)
from tests.synth import LinearPatchTarget, RandomImages, make_checkpoint


def _arrays(idx):
    idx = np.asarray(idx)
    return {"index": idx, "scores": np.stack([idx * 1.0, idx * 2.0], 1), "target": idx % 2}


def test_shards_roundtrip_sorted_by_index(tmp_path):
    write_shard(tmp_path, _arrays([4, 5]))
    write_shard(tmp_path, _arrays([0, 2]))
    assert [p.split("/")[-1] for p in shard_files(tmp_path)] == ["shard-000000000.npz", "shard-000000004.npz"]
    rows = read_shards(tmp_path)
    assert rows["index"].tolist() == [0, 2, 4, 5]
    assert rows["scores"][:, 1].tolist() == [0, 4, 8, 10]
    assert finished_indices(tmp_path) == {0, 2, 4, 5}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_duplicate_rows_are_an_error(tmp_path):
    write_shard(tmp_path, _arrays([1, 2]))
    write_shard(tmp_path, _arrays([0, 2]))
    with pytest.raises(DataError, match="duplicate rows"):
        read_shards(tmp_path)


def test_half_written_tmp_files_are_ignored_and_cleaned(tmp_path):
    write_shard(tmp_path, _arrays([0]))
    (tmp_path / ".shard-000000007.npz.123.tmp").write_bytes(b"half")
    assert finished_indices(tmp_path) == {0}
    assert clean_tmp(tmp_path) == 1
    assert not list(tmp_path.glob(".*"))


def test_predict_rows_are_split_across_ranks_exactly_once():
    """What evaluate relies on: Lightning's predict-time sampler (a loader over the remaining rows) gives
    every rank a disjoint slice, without padding, whose union is every row once. (It needs a row per rank:
    with fewer rows left than ranks, evaluate gives the loader a one-replica sampler, which it leaves alone.)"""
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSamplerWrapper
    from torch.utils.data import DistributedSampler, SequentialSampler, Subset

    todo = [5, 3, 9, 0, 7]
    rows = Subset(RandomImages(12), todo)
    for world in (1, 2, 3, 5):
        parts = [list(UnrepeatedDistributedSamplerWrapper(SequentialSampler(rows), num_replicas=world, rank=r,
                                                          shuffle=False)) for r in range(world)]
        seen = sorted(todo[i] for part in parts for i in part)
        assert seen == sorted(todo), world
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    few = DistributedSampler(rows, num_replicas=1, rank=0, shuffle=False)
    assert list(few) == list(range(len(todo)))  # every row, on every rank (no process group needed)


def test_writer_with_trainer_predict(tmp_path):
    bb = BlackBox(LinearPatchTarget(scale=0.3), output="logits")
    module = ExplainerModule.from_checkpoint(make_checkpoint(tmp_path / "e.ckpt", bb), target=bb)
    ds = RandomImages(20)
    writer = AttributionWriter(tmp_path / "shards")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.predict(module, DataLoader(ds, batch_size=6), return_predictions=False)
    rows = read_shards(tmp_path / "shards")
    assert rows["index"].tolist() == list(range(20))
    assert len(shard_files(tmp_path / "shards")) == 4
    want = module.explain(ds.x[:6])
    np.testing.assert_allclose(rows["scores"][:6], want["scores"].numpy(), atol=1e-6)
    assert rows["target"][:6].tolist() == want["target"].tolist()
    assert torch.as_tensor(rows["valid"]).all()
