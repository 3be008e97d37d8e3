"""Tests for detkit.engine.distributed: device strings, the unpadded eval sampler, and a 2-process gloo DDP run."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detkit.engine.distributed import DistInfo, ShardSampler, resolve_device, unwrap_model
from detkit.engine.experiment import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_folders import make_image_folder  # noqa: E402
from test_trainer import tiny_config  # noqa: E402  (the tiny config helper)


def test_resolve_device_strings():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="device: expected auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_sampler_covers_every_index_once(n, world):
    shards = [list(ShardSampler(n, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ShardSampler(n, rank, world)) for rank in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(n, world, world)


def test_unwrap_model_sees_through_wrappers():
    model = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    assert DistInfo().is_main and not DistInfo(rank=1, world_size=2).is_main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str, hashes: str) -> None:
    # Runs in a child process: the environment torchrun would set, then the library's own entry point.
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DETKIT_OFFLINE": "1"})

    def record(trainer, row):
        digest = hashlib.sha256()
        for name, tensor in sorted(trainer.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        Path(hashes, f"rank{rank}_epoch{row['epoch']}.json").write_text(json.dumps(
            {"sha": digest.hexdigest(), "val_count": row.get("val_count"), "frozen_head_only": row["epoch"] == 1}))

    # Epoch 1 trains the head only, epoch 2 everything: DDP must follow the change of trainable parameters.
    cfg = tiny_config(Path(root), Path(out), "train.epochs=2", "freeze.backbone_epochs=1", "data.batch_size=2")
    run_experiment(cfg, hooks=[record])


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=4, n_val=3)  # 9 val images: shards of 5 and 4
    out, hashes = tmp_path / "run", tmp_path / "hashes"
    hashes.mkdir()
    # fork where it is safe (the children inherit the imported libraries instead of importing torch
    # again); spawn once this process has used CUDA, whose autograd threads do not survive a fork
    method = "spawn" if torch.cuda.is_initialized() or os.environ.get("DETKIT_TEST_SPAWN") else "fork"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(root), str(out), str(hashes)), nprocs=2,
                       join=True, start_method=method)

    for epoch in (1, 2):
        ranks = [json.loads((hashes / f"rank{r}_epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["sha"] == ranks[1]["sha"], f"ranks disagree after epoch {epoch}"
        assert ranks[0]["val_count"] == ranks[1]["val_count"] == 9  # reduced over ranks, nothing counted twice
    epoch1 = json.loads((hashes / "rank0_epoch1.json").read_text())["sha"]
    epoch2 = json.loads((hashes / "rank0_epoch2.json").read_text())["sha"]
    assert epoch1 != epoch2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["world_size"] == 2 and [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert (out / "last.pt").is_file()
    # only rank 0 writes: a single set of outputs and no temporary leftovers
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
