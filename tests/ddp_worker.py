"""Run by tests under `torchrun --nproc-per-node 2`. `ddp_worker.py SHAPES OUT`: trains with gloo and
saves each rank's weights and the losses it computed itself (losses_rankN.json, one dict a
iteration); `ddp_worker.py SHAPES OUT pseudo-labels TEACHER`: saves each rank's pseudo-labelled
training split (run without torchrun: the single process's, as "alone")."""

import json
import sys
from pathlib import Path

import torch

from kdeval.data.source import Split
from kdeval.engine.distributed import start_distributed
from kdeval.engine.train import TrainSettings, _pseudo_labelled, train

root, out = Path(sys.argv[1]), Path(sys.argv[2])
split = Split(root / "annotations" / "instances_train.json", root / "train")
if sys.argv[3:4] == ["pseudo-labels"]:
    import kdeval.engine.train

    kdeval.engine.train.PSEUDO_LABEL_BATCH_SIZE = 2  # the 8 images in 4 batches: each rank runs 2
    job, _ = start_distributed("cpu")
    coco = json.loads(split.annotations.read_text())
    labelled = _pseudo_labelled(TrainSettings(pseudo_labels=sys.argv[4], pseudo_threshold=0.05), coco, split, "cpu")
    (out / f"pseudo_labels_{f'rank{job.rank}' if job.world > 1 else 'alone'}.json").write_text(json.dumps(labelled))
    if job.world == 1:
        sys.exit(0)
else:
    import kdeval.engine.train

    computed = []  # this rank's own losses, on its share of each global batch

    class RecordingStudent(kdeval.engine.train.DetectorWithFeatures):
        def forward(self, images, targets):
            losses, features, image_list = super().forward(images, targets)
            computed.append({"loss": sum(losses.values()).item(), **{name: value.item() for name, value in losses.items()}})
            return losses, features, image_list

    kdeval.engine.train.DetectorWithFeatures = RecordingStudent
    settings = TrainSettings(arch="r18", epochs=1, batch_size=4, fpn_channels=16, min_size=64, max_size=64, warmup_iters=1)
    result = train(settings, split, out, progress=False)
    rank = torch.distributed.get_rank()
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    (out / f"losses_rank{rank}.json").write_text(json.dumps(computed))
torch.distributed.destroy_process_group()
