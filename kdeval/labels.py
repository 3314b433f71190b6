"""The map between a model's contiguous labels and a dataset's category ids and names.

Its own module so that data/ (the datasets that feed a model) and models/ (checkpoints that carry it)
both reach it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdeval.errors import KdevalError


@dataclass(frozen=True)
class LabelSpace:
    """The map between a model's contiguous labels and a dataset's category ids.

    `category_ids[label]` is the COCO category id of a model label; a negative id marks a label
    that maps to no category (torchvision's COCO model has 91 labels for 80 categories).
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_categories(cls, categories: list[dict]) -> "LabelSpace":
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(str(c["name"]) for c in ordered))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self) -> dict[int, int]:
        return {cid: label for label, cid in enumerate(self.category_ids) if cid >= 0}

    def check_matches(self, categories: list[dict], where: str) -> None:
        """The model must know every category of the dataset it is scored on, by id and name."""
        known = {cid: name for cid, name in zip(self.category_ids, self.names) if cid >= 0}
        model_ids = {name: cid for cid, name in known.items()}
        for category in categories:
            name = known.get(category["id"])
            if name is None:
                same_name = model_ids.get(str(category["name"]))
                cause = (f"the model calls '{category['name']}' id {same_name}: `evaluate` and `errors` map the model's "
                         f"ids to the dataset's with --category-map FILE (id → id)") if same_name is not None else \
                    "`evaluate` and `errors` map the model's names or ids to the dataset's with --category-map FILE"
                raise KdevalError(
                    f"{where}: the model has no category id {category['id']} ('{category['name']}'); it was trained on "
                    + ", ".join(f"{cid} {n}" for cid, n in sorted(known.items())[:8])
                    + (f", … ({len(known)} in all)" if len(known) > 8 else "") + f"; {cause}"
                )
            if name != str(category["name"]):
                raise KdevalError(
                    f"{where}: category id {category['id']} is '{category['name']}' in the dataset but '{name}' in the "
                    f"model; if they are the same class, `evaluate` and `errors` map the names with --category-map FILE "
                    f"('{name}': '{category['name']}')"
                )
