"""Save a pruned PyTorch student and load it back (:func:`load_pruned`).

A student folder is a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files) plus
``student.json``. Where the pruning is one transformers can describe (``pruned_heads``, one FFN width
for every layer), ``config.json`` says so and ``AutoModel...from_pretrained`` loads the folder as it is
(``student.json`` records ``"native": true``); otherwise :func:`load_pruned` builds the model from the
config and gives every tensor the saved shape before loading the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from optimum_prune.distill.structure import resize
from optimum_prune.errors import InvalidModelError

STUDENT_FILE = "student.json"
STUDENT_FORMAT = 1
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "merges.txt", "vocab.json", "tokenizer.model", "added_tokens.json",
                    "preprocessor_config.json", "generation_config.json")


def save_student(model: torch.nn.Module, folder: str | os.PathLike, *, extra_files: list[Path] | None = None,
                 info: dict | None = None) -> Path:
    """Write ``model`` to ``folder`` (atomically, replacing it) with ``student.json``.

    Args:
        model: a student from :func:`~optimum_prune.distill.build_student` (trained or not).
        folder: destination; created or replaced.
        extra_files: files copied beside the weights (tokenizer files, ``pruning_plan.json``).
        info: recorded in ``student.json`` (e.g. the build report).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}-{uuid.uuid4().hex[:12]}"
    try:
        model.save_pretrained(tmp)
        for path in extra_files or []:
            if Path(path).is_file():
                shutil.copy2(path, tmp / Path(path).name)
        native = _loads_natively(model, tmp)
        meta = {"format": STUDENT_FORMAT, "architecture": type(model).__name__, "native": native,
                **(info or {})}
        (tmp / STUDENT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    """The tokenizer / processor files of a Hugging Face folder."""
    return [Path(folder) / name for name in _TOKENIZER_FILES if (Path(folder) / name).is_file()]


def _loads_natively(model: torch.nn.Module, folder: Path) -> bool:
    """Whether ``type(model).from_pretrained(folder)`` rebuilds every tensor with its saved shape."""
    import logging

    from transformers.utils import logging as hf_logging

    level, disabled = hf_logging.get_verbosity(), logging.root.manager.disable
    hf_logging.set_verbosity_error()
    logging.disable(max(disabled, logging.WARNING))
    try:
        loaded = type(model).from_pretrained(folder)
    except (RuntimeError, ValueError, OSError):
        return False
    finally:
        hf_logging.set_verbosity(level)
        logging.disable(disabled)
    mine, theirs = model.state_dict(), loaded.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k].cpu(), theirs[k]) for k in mine)


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    raise InvalidModelError(f"{folder} holds no model.safetensors: pass a folder written by save_student")


def load_pruned(folder: str | os.PathLike, *, model_class: type | None = None) -> torch.nn.Module:
    """Load a student saved by :func:`save_student` (or any folder of a pruned Hugging Face model whose
    weights have the pruned shapes).

    Args:
        folder: the student folder.
        model_class: the transformers class to build (default: ``config.architectures[0]``).
    """
    import transformers

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InvalidModelError(f"{folder} has no config.json: pass a folder written by save_student")
    config = transformers.AutoConfig.from_pretrained(folder)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, archs[0], None) if archs else None
        if model_class is None:
            raise InvalidModelError(f"{folder}/config.json names no known architecture ({archs}); pass "
                                    "model_class=")
    state = _read_state(folder)
    model = model_class(config)  # replays config.pruned_heads
    resize(model, {name: tuple(t.shape) for name, t in state.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise InvalidModelError(f"{folder}: the weights do not fit {model_class.__name__} (missing "
                                f"{missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        model.tie_weights()
    model.eval()
    return model
