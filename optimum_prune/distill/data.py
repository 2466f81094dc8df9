"""Training examples for distillation: a ``datasets`` split tokenised (or image-processed) per example."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from optimum_prune.errors import ConfigError


def encode_examples(folder: Path, dataset, model: torch.nn.Module, *, text_column: str = "text",
                    text_pair_column: str | None = None, image_column: str = "image",
                    label_column: str | None = None, max_length: int = 128):
    """``(examples, collator)``: one dict of model inputs per row of ``dataset`` and the collator that pads
    them into batches. Only the inputs ``model.forward`` accepts are kept; ``labels`` when
    ``label_column`` is given."""
    from optimum_prune.stages.data import (
        _as_image,
        class_names,
        labels_of,
        load_tokenizer,
        max_sequence_length,
    )

    accepted = set(inspect.signature(model.forward).parameters)
    columns = set(dataset.column_names)
    labels = None
    if label_column is not None:
        if label_column not in columns:
            raise ConfigError(f"distillation dataset has no label column {label_column!r}; columns: "
                              f"{sorted(columns)} (set label_column: null for soft targets only)")
        labels = labels_of(folder, list(dataset[label_column]), class_names(dataset, label_column)).tolist()
    if "pixel_values" in accepted and "input_ids" not in accepted:
        from transformers import AutoImageProcessor, default_data_collator

        if image_column not in columns:
            raise ConfigError(f"distillation dataset has no image column {image_column!r}; columns: "
                              f"{sorted(columns)}")
        processor = AutoImageProcessor.from_pretrained(folder)
        pixels = processor(images=[_as_image(im) for im in dataset[image_column]],
                           return_tensors="pt")["pixel_values"]
        examples = [{"pixel_values": p} for p in pixels]
        collator = default_data_collator
    else:
        from transformers import DataCollatorWithPadding

        if text_column not in columns:
            raise ConfigError(f"distillation dataset has no text column {text_column!r}; columns: "
                              f"{sorted(columns)}")
        tokenizer = load_tokenizer(folder)
        pair = list(dataset[text_pair_column]) if text_pair_column else None
        enc = tokenizer(list(dataset[text_column]), pair, truncation=True,
                        max_length=max_sequence_length(folder, max_length))
        keys = [k for k in enc if k in accepted]
        examples = [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]
        collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if labels is not None:
        for example, label in zip(examples, labels, strict=True):
            example["labels"] = label
    return examples, collator
