"""A COCO split as a torch Dataset of (image, target), as torchvision's detection models take them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from kdeval.data.coco import image_path
from kdeval.data.source import Split
from kdeval.errors import KdevalError
from kdeval.labels import LabelSpace


def read_rgb(path) -> Image.Image:
    """Read an image as COCO's loaders do: decoded by PIL, converted to RGB, no EXIF rotation."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise KdevalError(f"{path}: image file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise KdevalError(f"{path}: cannot read image ({exc})") from None


PIXELS = ("float", "uint8", "jpeg-bytes")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")


class CocoDetectionDataset(Dataset):
    """Index → (image, target {boxes (N, 4) xyxy, labels (N,), image_id}).

    The image is, by `pixels`: "float" CHW in [0, 1]; "uint8" CHW, 4× less to move between
    processes and to the GPU; "jpeg-bytes" the undecoded file for JPEGs (a 1-D uint8 tensor, for
    decoding on the GPU: `images_to_device`), uint8 CHW for other formats.

    Crowd annotations and boxes thinner than a pixel are left out of training targets.
    With `hflip > 0`, an index is an (epoch, position) pair and the flip is a function of
    (seed, epoch, position) alone, so a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, split: Split, coco: dict, labels: LabelSpace, hflip: float = 0.0, seed: int = 0, pixels: str = "float"):
        if pixels not in PIXELS or (pixels == "jpeg-bytes" and hflip > 0):
            raise ValueError(f"pixels {pixels!r} (hflip {hflip})")
        self.pixels = pixels
        self.images_dir = split.require_images()
        self.images = sorted(coco["images"], key=lambda image: image["id"])
        label_of = labels.label_of()
        self.targets: dict[int, list[tuple[list[float], int]]] = {image["id"]: [] for image in self.images}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w < 1 or h < 1 or ann["category_id"] not in label_of:
                continue
            self.targets[ann["image_id"]].append(([x, y, x + w, y + h], label_of[ann["category_id"]]))
        self.hflip = hflip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def path_of(self, position: int):
        return image_path(self.images_dir, self.images[position]["file_name"])

    def check_images_exist(self) -> None:
        """Raise for the first missing image file: found before a model runs, not an hour into it."""
        for position in range(len(self)):
            if not self.path_of(position).is_file():
                raise KdevalError(f"{self.path_of(position)}: image file not found")

    def __getitem__(self, index):
        epoch, position = index if isinstance(index, tuple) else (0, index)
        info = self.images[position]
        path = self.path_of(position)
        if self.pixels == "jpeg-bytes" and path.suffix.lower() in JPEG_SUFFIXES:
            # not torchvision's read_file: its tensor maps the file, and such storage cannot be sent
            # from a DataLoader worker (EBADF in DupFd)
            image = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        else:
            image = pil_to_tensor(read_rgb(path))
            if self.pixels == "float":
                image = image.float().div_(255)
        objects = self.targets[info["id"]]
        boxes_xyxy = torch.tensor([box for box, _ in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([label for _, label in objects], dtype=torch.int64)
        if self.hflip > 0 and np.random.default_rng([self.seed, epoch, position]).random() < self.hflip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes_xyxy = torch.stack([width - boxes_xyxy[:, 2], boxes_xyxy[:, 1], width - boxes_xyxy[:, 0], boxes_xyxy[:, 3]], dim=1)
        return image, {"boxes": boxes_xyxy, "labels": labels, "image_id": info["id"]}


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)
