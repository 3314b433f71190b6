"""What bringing image-sharded robustness scenarios together costs each rank: memory and time of the
collective, two ways, on gloo ranks on this machine.

    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_gather_cost.py --way all-at-end
    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_gather_cost.py --way in-turns

`all-at-end` is how `kdeval robustness` gathered image-sharded scenarios before: every rank kept its
detections of every pending (model, scenario) to the end, then one all_gather_object gave every rank
all of them, and rank 0 scored. `in-turns` is how it gathers now (ScenarioOwners): each finished
(model, scenario) goes to one rank, the ranks taking turns. Each rank holds --detections / world
COCO-style detection dicts per (model, scenario), --pairs pairs (a resumed COCO run with 15 scenarios
left and 3 models is 45 pairs of 500,000). Scoring is left out: what is timed is the collectives,
unpickling and merging into single-process order. Prints one JSON line per rank and writes it to
reports/bench/sharded_gather_cost_<way>_<pairs>_rank<r>.json: resident memory after the imports and
at its peak (ru_maxrss), and seconds gathering and merging.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch.distributed

from kdeval.engine import distributed
from kdeval.engine.detections import merge_shards
from kdeval.engine.robustness.scheduling import ScenarioOwners


def rank_detections(rank: int, world: int, detections: int, images: int, seed: int) -> list[dict]:
    """This rank's share (every world-th image) of one (model, scenario)'s detections."""
    rng = np.random.default_rng(seed * world + rank)
    mine = [i for i in range(images) if i % world == rank]
    per_image = detections // images
    boxes = np.round(rng.uniform(0, 600, (len(mine) * per_image, 4)), 3).tolist()
    scores = np.round(rng.uniform(0.05, 1, len(mine) * per_image), 5).tolist()
    categories = rng.integers(1, 91, len(mine) * per_image).tolist()
    return [{"image_id": mine[k // per_image], "category_id": categories[k], "bbox": boxes[k], "score": scores[k]}
            for k in range(len(mine) * per_image)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--way", choices=["all-at-end", "in-turns"], required=True)
    parser.add_argument("--pairs", type=int, default=6, help="(model, scenario) pairs pending")
    parser.add_argument("--detections", type=int, default=500_000, help="detections of one pair, over all ranks")
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    torch.distributed.init_process_group("gloo")
    dist_env = distributed.current()
    after_imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image_ids = list(range(args.images))
    gathering, merged = 0.0, 0
    if args.way == "all-at-end":
        found = {pair: rank_detections(dist_env.rank, dist_env.world, args.detections, args.images, pair) for pair in range(args.pairs)}
        start = time.perf_counter()
        shards = distributed.all_gather_lists([found])
        if dist_env.is_main:
            for pair in found:
                merged += len(merge_shards([shard[0][pair] for shard in shards], image_ids))
        gathering = time.perf_counter() - start
    else:
        owners = ScenarioOwners(image_ids)
        for pair in range(args.pairs):
            found = rank_detections(dist_env.rank, dist_env.world, args.detections, args.images, pair)
            start = time.perf_counter()
            together = owners.gather(found)
            gathering += time.perf_counter() - start
            merged += 0 if together is None else len(together)
            del found, together
    distributed.barrier()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"way": args.way, "rank": dist_env.rank, "world": dist_env.world, "pairs": args.pairs,
              "detections_per_pair": args.detections, "merged_here": merged, "rss_after_imports_mb": round(after_imports_mb),
              "peak_rss_mb": round(peak_mb), "gathering_and_merging_s": round(gathering, 2)}
    out = Path("reports/bench") / f"sharded_gather_cost_{args.way}_{args.pairs}_rank{dist_env.rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
