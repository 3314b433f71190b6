"""Running a model over images: batched inference under torch.inference_mode, images batched by
shape, postprocessing overlapped with the next batch, outputs turned into COCO detections.

Which images a process runs, the cache, and torchrun's gathering are engine/detections.py's.

torch, torchvision and the model code are imported by the functions that run a model, not by this
module: PredictSettings travels through commands that only read results files, which then never load
torch.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from kdeval.labels import LabelSpace
from kdeval.errors import KdevalError

if TYPE_CHECKING:
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from kdeval.data.foreign_results import CategoryMap

# Inference under AMP (the default on CUDA) runs in fp16, not bf16: bf16's 8-bit mantissa ties scores
# and shifts boxes, enough to move AP, where fp16 stays within rounding of fp32 (benchmarks/RESULTS.md).
# Inference needs no loss scaling, and tensor cores run both at the same rate. (Training keeps bf16
# for its range: engine/train.py.) The dtype's name in torch, so that naming it imports nothing.
AMP_DTYPE_NAME = "float16"


@dataclass(frozen=True)
class PredictSettings:
    batch_size: int = 8
    device: str = "cpu"
    workers: int | None = None  # None: by device (loader_workers)
    amp: bool = True  # fp16 autocast, on CUDA only (--fp32 turns it off); the CPU always runs fp32
    gpu_decode: bool = True  # on CUDA, JPEG files are decoded on the GPU (nvJPEG), other formats by PIL in the workers
    fold_batch_norms: bool = True  # BatchNorms folded into their convolutions (inference_model)
    category_map: Optional["CategoryMap"] = None  # the model's categories → the dataset's (--category-map)
    cuda_graphs: bool = False  # on CUDA, backbone + FPN + head replayed as CUDA graphs (models/cuda_graphs.py)

    def cache_fields(self) -> dict:
        # batch size, workers and CUDA graphs do not change detections; device, precision and the category map may
        fields = {"device_type": self._device_type(), "amp": self.uses_amp()}
        if fields["amp"]:  # detections made under another AMP dtype are not reused
            fields["amp_dtype"] = AMP_DTYPE_NAME
        if self.decodes_on_gpu():  # nvJPEG's pixels may differ from libjpeg's by a level here and there
            fields["decode"] = "gpu"
        if self.category_map is not None:
            fields["category_map"] = self.category_map.digest()
        if not self.fold_batch_norms:
            fields["fold_batch_norms"] = False
        return fields

    def _device_type(self) -> str:
        """'cpu' or 'cuda' (torch's parsing of the device, which also refuses a malformed one)."""
        import torch

        return torch.device(self.device).type

    def uses_amp(self) -> bool:
        """AMP (the default, --fp32 turns it off) applies on CUDA only; the CPU runs fp32."""
        return self.amp and self._device_type() == "cuda"

    def autocast(self) -> torch.autocast:
        """The precision context for running the model: AMP_DTYPE_NAME autocast where AMP applies."""
        import torch

        return torch.autocast(self._device_type(), enabled=self.uses_amp(), dtype=getattr(torch, AMP_DTYPE_NAME))

    def decodes_on_gpu(self) -> bool:
        return self.gpu_decode and self._device_type() == "cuda"

    def pixels(self) -> str:
        """What the dataset hands over (CocoDetectionDataset's `pixels`): undecoded JPEGs for the GPU,
        else uint8 images, converted to float on the model's device."""
        return "jpeg-bytes" if self.decodes_on_gpu() else "uint8"


def detections_from_output(output: dict, image_id: int, labels: LabelSpace) -> list[dict]:
    """One image's model output (boxes xyxy, scores, labels) → COCO results entries (bbox xywh)."""
    boxes_xyxy = output["boxes"].float().cpu().tolist()
    scores = output["scores"].float().cpu().tolist()
    label_ids = output["labels"].cpu().tolist()
    detections = []
    for (x0, y0, x1, y1), score, label in zip(boxes_xyxy, scores, label_ids):
        category_id = labels.category_ids[label]
        if category_id < 0:
            continue
        detections.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "score": round(score, 5),
            }
        )
    return detections


def outputs_to_cpu(outputs: list[dict]) -> list[dict]:
    """A batch's outputs moved to the CPU in one copy (boxes, score and label packed per detection)
    instead of three synchronising copies per image."""
    if not outputs or outputs[0]["boxes"].device.type == "cpu":
        return outputs
    return packed_to_cpu(outputs)


def packed_to_cpu(outputs: list[dict]) -> list[dict]:
    """One row (x0, y0, x1, y1, score, label) per detection, the batch's images one after the other:
    a handful of operations for the batch (labels are small integers, exact in float32)."""
    import torch

    columns = [torch.cat([o[key] for o in outputs]).float().view(-1, width) for key, width in (("boxes", 4), ("scores", 1), ("labels", 1))]
    packed = torch.cat(columns, dim=1).cpu()
    moved = []
    for part in packed.split([len(o["scores"]) for o in outputs]):
        moved.append({"boxes": part[:, :4], "scores": part[:, 4], "labels": part[:, 5].long()})
    return moved


def loader_workers(settings: PredictSettings, device: torch.device) -> int:
    """--workers, or by default: none on the CPU (they would compete with the model for cores),
    up to 8 decoding processes beside a GPU."""
    return settings.workers if settings.workers is not None else default_workers(device)


def default_workers(device: torch.device) -> int:
    """DataLoader processes when none are asked for: none on the CPU, where the model already uses every
    core, up to 8 beside a GPU, so the main process only launches kernels;
    under torchrun the node's cores are shared among its ranks (LOCAL_WORLD_SIZE)."""
    if device.type != "cuda":
        return 0
    ranks_on_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, usable_cores() // ranks_on_node))


def usable_cores() -> int:
    """The cores this process may run on (a Slurm job or a container may get fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def images_to_device(images: list[torch.Tensor], device: torch.device, image_ids: list[int] | None = None) -> list[torch.Tensor]:
    """A batch as the dataset gave it (float or uint8 CHW, or undecoded JPEG bytes as 1-D uint8) →
    float CHW in [0, 1] on `device`. JPEGs are decoded together by nvJPEG on CUDA (by libjpeg on the
    CPU), without EXIF rotation and converted to RGB, as PIL and COCO's loaders read them; one that
    nvJPEG refuses (CMYK, say) is decoded on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    encoded = [i for i, image in enumerate(images) if image.dim() == 1]
    images = list(images)
    if encoded:
        data = [images[i] for i in encoded]
        try:
            decoded = decode_jpegs_on_gpu(data, device) if device.type == "cuda" else decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            decoded = []
            for i, one in zip(encoded, data):
                try:
                    decoded.append(decode_image(one, mode=ImageReadMode.RGB))
                except RuntimeError as exc:
                    name = f"image {image_ids[i]}" if image_ids else "an image"
                    raise KdevalError(f"{name}: cannot decode JPEG ({exc})") from None
        for i, image in zip(encoded, decoded):
            images[i] = image
    on_device = []
    for image in images:
        image = image.to(device, non_blocking=True)
        on_device.append(image.float().div_(255) if image.dtype == torch.uint8 else image)
    return on_device


_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}  # by CUDA device index


def decode_jpegs_on_gpu(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG decoding (torchvision's decode_jpeg) whose outputs are safe to allocate while the current
    stream still runs earlier batches. torchvision allocates the outputs on the current stream but
    writes them from a stream of its own that does not wait for the current one: a block the
    caching allocator had just taken back from a tensor that queued kernels still read (freed on the
    host while the network ran ahead, as OverlappedPostprocessing lets it) could be overwritten. Here
    they are allocated on a stream of their own, which no kernel uses, marked as used by the current
    stream (so the allocator waits for it before reusing them), and the current stream waits for them."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    current = torch.cuda.current_stream(device)
    if current.device_index not in _DECODE_STREAMS:
        _DECODE_STREAMS[current.device_index] = torch.cuda.Stream(current.device)
    stream = _DECODE_STREAMS[current.device_index]
    with torch.cuda.stream(stream):
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    current.wait_stream(stream)
    for image in decoded:
        image.record_stream(current)
    return decoded


def inference_model(model: torch.nn.Module, settings: PredictSettings) -> torch.nn.Module:
    """The model as kdeval runs it for detections, a copy (the caller's model is left as it was): in
    eval mode on the device, its BatchNorms folded into their convolutions, in channels_last (on the
    CPU too, where oneDNN's convolutions run faster so: benchmarks/RESULTS.md); with
    settings.cuda_graphs, a RetinaNet on CUDA replays its backbone, FPN and head as CUDA graphs."""
    import torch

    from kdeval.models.cuda_graphs import CAPTURES, GraphedNetwork
    from kdeval.models.postprocess import BatchedRetinaNet
    from kdeval.models.retinanet import fold_batch_norms

    model = copy.deepcopy(model).eval()
    if settings.fold_batch_norms:
        fold_batch_norms(model)
    device = torch.device(settings.device)
    model = model.to(device, memory_format=torch.channels_last)
    if settings.cuda_graphs and device.type in CAPTURES and isinstance(model, BatchedRetinaNet):
        model.graphed_network = GraphedNetwork(model.backbone_and_head, device)
    return model


def run_model(model, dataset, settings: PredictSettings, labels: LabelSpace, progress: bool = True, desc: str = "predict") -> list[dict]:
    """Batched inference over a dataset of (image, target): BatchNorms folded, channels_last, AMP on CUDA, pinned
    memory with non-blocking copies, images moved as uint8 (or undecoded JPEG bytes) and made float
    on the device. Detections in dataset order."""
    import torch
    from torch.profiler import record_function
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from kdeval.data.dataset import collate

    device = torch.device(settings.device)
    model = inference_model(model, settings)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=loader_workers(settings, device),
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    detections: list[dict] = []
    overlapped = OverlappedPostprocessing(device)

    def collect(finished: list[tuple[list[dict], list[dict]]]) -> None:
        for targets, outputs in finished:
            detections.extend(batch_detections(outputs, targets, labels))

    with torch.inference_mode(), settings.autocast():
        for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            # the named ranges show in torch.profiler traces (benchmarks/predict_throughput.py --profile)
            with record_function("kdeval.images_to_device"):
                images = images_to_device(images, device, [target["image_id"] for target in targets])
            collect(overlapped.push(model, images, targets))
        collect(overlapped.drain())
    return detections


def batch_detections(outputs: list[dict], targets: list[dict], labels: LabelSpace) -> list[dict]:
    """One batch's outputs, on the CPU → its COCO results entries."""
    from torch.profiler import record_function

    with record_function("kdeval.detections"):
        return [det for output, target in zip(outputs, targets) for det in detections_from_output(output, target["image_id"], labels)]


class OverlappedPostprocessing:
    """Runs each batch's network when it is pushed and its postprocessing after the next batch's
    network has been launched, so that on CUDA the host's postprocessing of one batch — its
    synchronisations wait for the GPU — overlaps the GPU's network work on the next.

    Without it an R50's GPU idles while the host postprocesses, its batches being host-bound
    (benchmarks/RESULTS.md). Here the postprocessing runs on a side
    stream that waits (by an event) for its own batch's network only, so its synchronisations do not
    wait for the next batch's; it ends with the outputs copied to the CPU and the side stream
    synchronised, so no tensor of a batch is freed while the GPU still reads it. Results come back in the
    order the batches went in, each with the payload pushed with it, and are the same as without the
    overlap. On the CPU nothing overlaps, so each batch is postprocessed at once (DEFER_ON: the
    device types that defer; the tests add "cpu" to check the bookkeeping)."""

    DEFER_ON = ("cuda",)

    def __init__(self, device: torch.device) -> None:
        self.defers = device.type in self.DEFER_ON
        self.device = device
        # high priority: its few small kernels are scheduled ahead of the next batch's convolutions,
        # so each synchronisation of the postprocessing waits as little as possible. Without deferral
        # everything runs on the current stream, as before the overlap.
        import torch

        self.side_stream = torch.cuda.Stream(device, priority=-1) if device.type == "cuda" and self.defers else None
        self._launched: tuple | None = None  # (postprocess, launched outputs, network-done event, payload)

    def push(self, model, images: list[torch.Tensor], payload) -> list[tuple[object, list[dict]]]:
        """Launch `model`'s network on `images`; returns the batches finished meanwhile as (payload,
        outputs on the CPU): the one pushed before (or, where nothing is deferred, this one)."""
        import torch
        from torch.profiler import record_function

        from kdeval.models.postprocess import BatchedRetinaNet

        with record_function("kdeval.model"):
            if isinstance(model, BatchedRetinaNet):
                postprocess, launched = model.postprocess_batch, model.network_outputs(images)
            else:  # another detector: whole, as it comes
                postprocess, launched = None, model(images)
        event = None
        if self.side_stream is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the model's device's, whichever device is current
        item = (postprocess, launched, event, payload)
        if not self.defers:
            return [self._finish(item)]
        previous, self._launched = self._launched, item
        return [] if previous is None else [self._finish(previous)]

    def drain(self) -> list[tuple[object, list[dict]]]:
        """The batch still waiting for its postprocessing, finished (none if none waits)."""
        previous, self._launched = self._launched, None
        return [] if previous is None else [self._finish(previous)]

    def _finish(self, item: tuple) -> tuple[object, list[dict]]:
        postprocess, launched, event, payload = item
        if self.side_stream is None:
            return payload, self._postprocessed(postprocess, launched)
        import torch

        self.side_stream.wait_event(event)
        with torch.cuda.stream(self.side_stream):
            outputs = self._postprocessed(postprocess, launched)
        # the copy to the CPU has waited for the side stream, except where a batch found nothing (an
        # empty copy returns at once) while kernels reading the batch's memory may still be queued
        self.side_stream.synchronize()
        return payload, outputs

    @staticmethod
    def _postprocessed(postprocess, launched) -> list[dict]:
        from torch.profiler import record_function

        outputs = launched if postprocess is None else postprocess(launched)
        with record_function("kdeval.outputs_to_cpu"):
            return outputs_to_cpu(outputs)


def padded_input_shape(height: int, width: int, transform: GeneralizedRCNNTransform) -> tuple[int, int]:
    """The (height, width) an image of this size takes in a batch after `transform` (torchvision's
    eval resize to min_size[-1], capped by max_size, then padding to size_divisible), up to rounding."""
    scale = min(transform.min_size[-1] / min(height, width), transform.max_size / max(height, width))
    divisible = transform.size_divisible
    return tuple(math.ceil(math.floor(side * scale) / divisible) * divisible for side in (height, width))


def batching_order(model, images: list[dict]) -> list[int]:
    """The positions of `images` (COCO image records) in the order kdeval batches them: by the padded
    input shape the model's transform gives each, the dataset's order within a shape. A batch is padded
    to its largest image, so in the dataset's order a batch of landscape and portrait images is padded
    to a square: a 640×480 image at 800 px, 800×1088 alone, would cost 1,088×1,088 or more. Grouped,
    consecutive images share a shape, and a batch pads only where two shapes meet; with
    `--cuda-graphs` the batches also come in few shapes. Where the model has no torchvision-style
    transform or an image record lacks its size, the dataset's order."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = getattr(model, "transform", None)
    if (not isinstance(transform, GeneralizedRCNNTransform) or transform.fixed_size is not None
            or not all(image.get("height") and image.get("width") for image in images)):
        return list(range(len(images)))
    shapes = [padded_input_shape(image["height"], image["width"], transform) for image in images]
    return sorted(range(len(images)), key=shapes.__getitem__)  # stable: the dataset's order within a shape
