"""Tiny Hugging Face folders (zoo models plus a tokenizer or image processor) and datasets for pipeline tests.

The zoo's random models have no tokenizer; pipelines that read data need one, so a lower-casing WordPiece
tokenizer over single letters (it fits the zoo's 100-token vocabulary) is saved next to the weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from zoo import export_zoo_model

TEXTS = [
    "A sharp, funny film; the cast is wonderful.",
    "A dull, overlong mess.",
    "Great fun from start to finish!",
    "I would not watch it again.",
    "The story is thin but the acting is good.",
    "Boring and predictable.",
    "A quiet, moving portrait.",
    "Loud, messy, and far too long.",
]


def save_letter_tokenizer(folder: Path) -> None:
    """A BERT tokenizer over single letters and punctuation (fits a 100-token vocabulary)."""
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *".,!?'-;"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(folder)


def tiny_hf_folder(name: str, zoo_root: Path, dest: Path) -> Path:
    """The zoo model ``name`` as a Hugging Face folder with a tokenizer (text) or image processor (vision)."""
    onnx_dir = export_zoo_model(name, zoo_root)
    hf = dest / f"{name}-hf"
    if hf.exists():
        return hf
    shutil.copytree(onnx_dir.parent / "hf", hf)
    (hf / "zoo-fingerprint.txt").unlink(missing_ok=True)
    if name in ("vit", "deit"):
        from transformers import ViTImageProcessor

        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(hf)
    else:
        save_letter_tokenizer(hf)
    return hf


def text_dataset(dest: Path, n: int = 16) -> Path:
    """A labelled text split saved with ``Dataset.save_to_disk`` (columns ``text``, ``label``)."""
    import datasets

    path = dest / "text-dataset"
    if not path.exists():
        rows = [TEXTS[i % len(TEXTS)] for i in range(n)]
        datasets.Dataset.from_dict({"text": rows, "label": [i % 2 for i in range(n)]}).save_to_disk(path)
    return path
