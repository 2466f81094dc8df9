"""Data for stages: ``datasets`` splits (calibration, evaluation) and model inputs built from them.

A :class:`DatasetConfig` names a split the way ``datasets.load_dataset`` does (``csv``/``json``/``text``/
``parquet``/``imagefolder`` with ``data_files``, or a folder written by ``Dataset.save_to_disk``), or the
built-in ``rotten_tomatoes`` (movie reviews from the local asset cache, ``text`` and ``label`` columns,
a deterministic 80/20 ``train``/``test`` split by a hash of the text). The Hub is never contacted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from optimum_prune.errors import ConfigError, InvalidModelError
from optimum_prune.passes.cache_inputs import narrowed_dims
from optimum_prune.runtime import empty_cache
from optimum_prune.stages.base import StageConfig, positive_int

BUILTIN_DATASETS = ("rotten_tomatoes",)
FILE_BUILDERS = ("csv", "json", "text", "parquet", "arrow", "imagefolder", "audiofolder")
"""``datasets`` builders that read local ``data_files`` (no Hub)."""
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text",
               ".parquet": "parquet", ".arrow": "arrow"}


def _builder_of(data_files: str | list | dict) -> str | None:
    """The ``datasets`` builder the extension of ``data_files`` names (the first file's), or None."""
    first = data_files
    while isinstance(first, list | tuple | dict):
        first = next(iter(first.values() if isinstance(first, dict) else first), None)
    return _EXTENSIONS.get(Path(str(first)).suffix.lower()) if first is not None else None


@dataclasses.dataclass
class DatasetConfig(StageConfig):
    """A deterministic sample of one dataset split.

    Args:
        name: ``"rotten_tomatoes"`` (built in), a ``datasets`` builder (``"csv"``, ``"json"``, ``"text"``,
            ``"parquet"``, ``"imagefolder"``) used with ``data_files``, or a ``save_to_disk`` folder.
        split: the split to read (``"train"``, ``"test"``, ...).
        data_files: files for a builder (a path, a list, or a mapping of split to paths).
        config_name: builder configuration name, if any.
        text_column / text_pair_column: text inputs (pairs for sentence-pair classifiers).
        image_column: image input (PIL images or paths).
        label_column: labels for accuracy (ints, or strings mapped through the model's ``label2id``).
        num_samples: examples drawn (after a shuffle with ``seed``).
        max_length: tokenizer truncation length.
        seed: shuffle seed.
        pack: calibration of the ``prune`` stage only: join the texts into one token stream and cut it into
            ``num_samples`` windows of ``max_length`` tokens (``CalibrationConfig.pack``; for decoders).
    """

    name: str = "rotten_tomatoes"
    split: str = "train"
    data_files: str | list | dict | None = None
    config_name: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    image_column: str = "image"
    label_column: str | None = "label"
    num_samples: int = 64
    max_length: int = 128
    seed: int = 0
    pack: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pack, bool):
            raise ConfigError(f"dataset pack must be true or false; got {self.pack!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"dataset name must be a non-empty string; got {self.name!r}")
        if isinstance(self.data_files, Path):
            self.data_files = str(self.data_files)
        if self.data_files is not None and self.name == "rotten_tomatoes":
            builder = _builder_of(self.data_files)
            if builder is None:
                raise ConfigError(f"dataset data_files {self.data_files!r} given without a builder name: add "
                                  f"name: csv, json, text, parquet or imagefolder")
            self.name = builder  # data_files without a name: the builder their extension says
        if self.name in FILE_BUILDERS and self.data_files is None:
            raise ConfigError(f"dataset name {self.name!r} reads data_files: add data_files (a path, a glob "
                              "or a list)")
        positive_int(self.num_samples, "dataset num_samples")
        positive_int(self.max_length, "dataset max_length")

    @classmethod
    def coerce(cls, value: Any, where: str) -> DatasetConfig | None:
        """``None``, a :class:`DatasetConfig`, a mapping, or a bare name, as a :class:`DatasetConfig`."""
        if value is None or isinstance(value, DatasetConfig):
            return value
        if isinstance(value, str):
            return cls(name=value)
        return cls.from_dict(value, where=where)


def load_split(cfg: DatasetConfig):
    """The ``datasets.Dataset`` sample described by ``cfg`` (shuffled with ``seed``, ``num_samples`` rows)."""
    import datasets

    if cfg.name == "rotten_tomatoes":
        ds = _rotten_tomatoes(cfg.split)
    elif Path(cfg.name).is_dir() and any(
        (Path(cfg.name) / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")
    ):
        ds = datasets.load_from_disk(cfg.name)
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise ConfigError(f"dataset {cfg.name} has no split {cfg.split!r}; splits: {list(ds)}")
            ds = ds[cfg.split]
    elif cfg.name not in FILE_BUILDERS and not Path(cfg.name).exists():
        raise ConfigError(
            f"dataset {cfg.name!r} is not a local dataset (the Hub is never contacted): use "
            f"{', '.join(BUILTIN_DATASETS)}, a local folder (Dataset.save_to_disk, or data files), or a "
            f"builder of local files ({', '.join(FILE_BUILDERS)}) with data_files")
    else:
        try:
            ds = datasets.load_dataset(cfg.name, cfg.config_name, data_files=cfg.data_files, split=cfg.split)
        except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, hub errors)
            raise ConfigError(
                f"could not load dataset {cfg.name!r} split {cfg.split!r} (data_files="
                f"{cfg.data_files!r}): {type(e).__name__}: {e}"
            ) from e
    if len(ds) == 0:
        raise ConfigError(f"dataset {cfg.name!r} split {cfg.split!r} is empty")
    ds = ds.shuffle(seed=cfg.seed)
    return ds.select(range(min(cfg.num_samples, len(ds))))


def _rotten_tomatoes(split: str):
    import datasets
    import pandas as pd

    from optimum_prune.assets import fetch_rotten_tomatoes

    if split not in ("train", "test"):
        raise ConfigError(f"rotten_tomatoes has splits 'train' and 'test'; got {split!r}")
    frame = pd.read_csv(fetch_rotten_tomatoes(), usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna()
    in_test = frame["text"].map(lambda t: int(hashlib.md5(t.encode()).hexdigest(), 16) % 5 == 0)
    frame = frame[in_test if split == "test" else ~in_test]
    return datasets.Dataset.from_dict(
        {"text": frame["text"].tolist(), "label": (frame["category"] == "fresh").astype(int).tolist()}
    )


# --------------------------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------------------------


def input_kind(input_names: list[str]) -> str:
    """``"image"`` when the model takes ``pixel_values``, ``"text"`` when it takes ``input_ids``."""
    if "pixel_values" in input_names:
        return "image"
    if "input_ids" in input_names:
        return "text"
    raise InvalidModelError(
        f"cannot feed a model with inputs {input_names}: expected input_ids or pixel_values"
    )


def encode(
    folder: Path, rows: dict[str, list], cfg: DatasetConfig, input_names: list[str]
) -> dict[str, np.ndarray]:
    """Tokenize (or preprocess images of) a batch of dataset rows for a model folder."""
    if input_kind(input_names) == "image":
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder)
        if cfg.image_column not in rows:
            raise ConfigError(f"dataset has no image column {cfg.image_column!r}; columns: {sorted(rows)}")
        images = [_as_image(im) for im in rows[cfg.image_column]]
        return dict(processor(images=images, return_tensors="np"))
    tokenizer = load_tokenizer(folder)
    if cfg.text_column not in rows:
        raise ConfigError(f"dataset has no text column {cfg.text_column!r}; columns: {sorted(rows)}")
    pair = rows[cfg.text_pair_column] if cfg.text_pair_column else None
    enc = tokenizer(
        rows[cfg.text_column],
        pair,
        padding=True,
        truncation=True,
        max_length=max_sequence_length(folder, cfg.max_length),
        return_tensors="np",
    )
    return {k: v for k, v in enc.items() if k in input_names}


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")


def max_sequence_length(folder: Path, wanted: int) -> int:
    """``wanted``, capped by the model's position table (``max_position_embeddings`` and friends)."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    limits = [config[k] for k in _POSITION_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    return min([wanted, *limits])


def load_tokenizer(folder: Path):
    """The folder's tokenizer, with a pad token (decoders often have none: the EOS token is used)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise InvalidModelError(
            f"{folder} has no usable tokenizer ({e}); a dataset needs one. Export from a "
            "Hugging Face folder that holds the tokenizer files."
        ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _as_image(value):
    from PIL import Image

    if isinstance(value, str | Path):
        value = Image.open(value)
    if isinstance(value, dict) and "bytes" in value:
        import io

        value = Image.open(io.BytesIO(value["bytes"]))
    return value.convert("RGB") if hasattr(value, "convert") else value


def labels_of(folder: Path, values: list, names: list[str] | None = None) -> np.ndarray:
    """Integer labels for the model of ``folder``: strings through its ``label2id``; ints as they are, unless
    the dataset names its classes (``names``, a ``ClassLabel``'s: an imagefolder numbers its folders in
    alphabetical order) and the model's ``label2id`` knows every name, which then maps them."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    label2id = {str(k).lower(): int(v) for k, v in (config.get("label2id") or {}).items()}
    if all(isinstance(v, int | np.integer) for v in values):
        if names and all(str(n).lower() in label2id for n in names):
            return np.asarray([label2id[str(names[int(v)]).lower()] for v in values], dtype=np.int64)
        return np.asarray(values, dtype=np.int64)
    try:
        return np.asarray([label2id[str(v).lower()] for v in values], dtype=np.int64)
    except KeyError as e:
        raise ConfigError(f"label {e.args[0]!r} is not in the model's label2id {sorted(label2id)}") from None


def class_names(dataset, column: str) -> list[str] | None:
    """The class names of ``dataset``'s ``column`` when it is a ``datasets.ClassLabel``, else None."""
    feature = getattr(dataset, "features", {}).get(column)
    return list(feature.names) if getattr(feature, "names", None) else None


# --------------------------------------------------------------------------------------------------------
# Completing feeds for an ONNX Runtime session
# --------------------------------------------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def complete_feeds(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the inputs an exported graph takes beyond ids/pixels: masks of ones, zero token types,
    ``position_ids`` from the mask, and empty ``past_key_values`` (past length 0)."""
    narrowed = narrowed_dims(session)
    out: dict[str, np.ndarray] = {}
    first = next(iter(feeds.values()))
    batch = first.shape[0]
    seq = first.shape[1] if first.ndim > 1 else 1
    mask = feeds.get("attention_mask")
    for inp in session.get_inputs():
        name = inp.name
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        if name in feeds:
            out[name] = np.asarray(feeds[name]).astype(dtype, copy=False)
        elif name == "attention_mask":
            mask = np.ones((batch, seq), dtype=dtype)
            out[name] = mask
        elif name == "token_type_ids":
            out[name] = np.zeros((batch, seq), dtype=dtype)
        elif name == "position_ids":
            m = mask if mask is not None else np.ones((batch, seq), dtype=np.int64)
            out[name] = np.clip(np.cumsum(m, axis=1) - 1, 0, None).astype(dtype)
        elif name.startswith("past_key_values") or "past" in name:
            out[name] = empty_cache(inp, batch, narrowed)
        else:
            raise InvalidModelError(f"cannot build input {name!r} ({inp.type}, {inp.shape}) of the model")
    return out


def synthetic_inputs(
    session, folder: Path, *, batch: int, sequence: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for ``session``: token ids over the vocabulary or normal pixels at the config's size."""
    rng = np.random.default_rng(seed)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    names = [i.name for i in session.get_inputs()]
    feeds: dict[str, np.ndarray] = {}
    if input_kind(names) == "image":
        inp = next(i for i in session.get_inputs() if i.name == "pixel_values")
        size = config.get("image_size", 224)
        size = size if isinstance(size, int) else size[0]
        channels = config.get("num_channels", 3)
        shape = [batch, channels, size, size]
        shape = [d if isinstance(d, int) else shape[i] for i, d in enumerate(inp.shape)]
        feeds["pixel_values"] = rng.standard_normal(shape).astype(np.float32)
    else:
        vocab = int(config.get("vocab_size") or 1000)
        low = min(5, vocab - 1)  # skip the usual special tokens
        sequence = max_sequence_length(folder, sequence)
        feeds["input_ids"] = rng.integers(low, vocab, size=(batch, sequence)).astype(np.int64)
    return complete_feeds(session, feeds)
