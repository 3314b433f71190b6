"""Run by tests under `torchrun --nproc-per-node 2`: trains with gloo and saves each rank's weights."""

import sys
from pathlib import Path

import torch

from kdeval.data.source import Split
from kdeval.engine.train import TrainSettings, train

root, out = Path(sys.argv[1]), Path(sys.argv[2])
settings = TrainSettings(arch="r18", epochs=1, batch_size=4, fpn_channels=16, min_size=64, max_size=64, warmup_iters=1)
result = train(settings, Split(root / "annotations" / "instances_train.json", root / "train"), out, progress=False)
rank = torch.distributed.get_rank()
torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()
