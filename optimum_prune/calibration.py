"""Calibration data and activation statistics captured with ONNX Runtime.

``CalibrationData`` holds batches of numpy feeds: tokenised with the model folder's own tokenizer (or
processed with its image processor) from a ``datasets.Dataset``, a dataset name, a list of texts, or
given directly as feed dicts; or generated from the model's declared inputs (data-free).

``capture_activations`` runs a clone of the model with the requested intermediate tensors exposed as
extra graph outputs and streams per-channel statistics batch by batch: sum, sum of squares and count
along a channel axis, and on request the Gram matrix ``X^T X`` of that axis. Only requested tensors are
fetched, at most ``max_tensors_per_run`` per run (in graph order), so memory stays bounded by one batch
of a few tensors plus the accumulators. Padding positions (``attention_mask == 0``) are left out of the
statistics of tensors laid out as ``[batch, sequence, ...]``.

    calib = CalibrationData.from_dataset(ds, onnx_dir, config=CalibrationConfig(num_samples=128))
    stats = capture_activations(model, calib, [StatRequest("h", axis=2, gram=True)])
    stats["h", 2].rms()
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from optimum_prune.errors import ConfigError
from optimum_prune.graph import Shape, infer_shapes, load_model
from optimum_prune.runtime import complete_feeds, generate_feeds, ort_session

_TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "question", "prompt")
_IMAGE_COLUMNS = ("image", "img", "pixel_values")


@dataclass(frozen=True)
class CalibrationConfig:
    """How much calibration data to use and how to batch it.

    Args:
        num_samples: examples (rows) used in total; fewer when the source has fewer.
        batch_size: examples per ONNX Runtime run.
        max_length: tokens per text example (longer texts are truncated); batches are padded to their
            longest example.
        column: dataset column to read; by default the first of ``text``, ``sentence``, ... or
            ``image``, ``img`` present, else the first string column.
        shuffle: draw the examples at random (with ``seed``) instead of taking the first ones.
        seed: seed of the shuffle and of generated inputs.
        sort_by_length: batch texts of similar length together (less padding; statistics are sums,
            so the order does not change them).
        pack: texts only: join the texts (separated by ``"\\n\\n"``) into one token stream and cut it
            into ``num_samples`` windows of exactly ``max_length`` tokens, as SparseGPT, Wanda and FLAP
            calibrate decoders on long segments. Short texts (reviews, sentences) then cover the
            positions a decoder sees in long contexts (``benchmarks/decoder.py --pack`` compares both on
            SmolLM2-135M). Fewer windows when the texts run out.
    """

    num_samples: int = 128
    batch_size: int = 32
    max_length: int = 128
    column: str | None = None
    shuffle: bool = False
    seed: int = 0
    sort_by_length: bool = True
    pack: bool = False

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CalibrationConfig.{name} must be an integer >= 1, got {value!r}")
        if self.column is not None and not isinstance(self.column, str):
            raise ConfigError(f"CalibrationConfig.column must be a column name or None, got {self.column!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"CalibrationConfig.seed must be an integer, got {self.seed!r}")
        for name in ("shuffle", "sort_by_length", "pack"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"CalibrationConfig.{name} must be True or False, got {value!r}")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "max_length": self.max_length,
                "column": self.column, "shuffle": self.shuffle, "seed": self.seed,
                "sort_by_length": self.sort_by_length, "pack": self.pack}


class CalibrationData:
    """Batches of numpy feeds for ONNX Runtime, with where they came from.

    Build it with :meth:`from_dataset`, :meth:`from_texts`, :meth:`from_feeds` or :meth:`generated`.
    Feeds are matched to a model's inputs when run: keys the model does not take are dropped,
    ``attention_mask`` / ``token_type_ids`` / ``position_ids`` are filled in when missing.
    """

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], config: CalibrationConfig | None = None,
                 source: str = "feeds") -> None:
        self.config = config or CalibrationConfig()
        self._batches = [dict(b) for b in batches]
        if not self._batches:
            raise ConfigError("calibration data is empty: give at least one example")
        self.source = source

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_feeds(cls, feeds: Iterable[dict[str, np.ndarray]],
                   config: CalibrationConfig | None = None) -> CalibrationData:
        """From feed dicts (input name -> array with the batch on axis 0).

        Each dict is split into batches of at most ``config.batch_size`` rows; dicts are never merged
        (their shapes may differ); ``config.num_samples`` rows are used in total.
        """
        config = config or CalibrationConfig()
        batches: list[dict[str, np.ndarray]] = []
        total = 0
        for i, feed in enumerate(feeds):
            arrays = {k: np.asarray(v) for k, v in feed.items()}
            rows = {a.shape[0] if a.ndim else None for a in arrays.values()}
            if len(rows) != 1 or None in rows:
                shapes = {k: a.shape for k, a in arrays.items()}
                raise ConfigError(f"feed dict {i} has arrays with different leading (batch) sizes {shapes}; "
                                  "every input needs the batch on axis 0")
            n = rows.pop()
            for start in range(0, n, config.batch_size):
                take = min(config.batch_size, n - start, config.num_samples - total)
                if take <= 0:
                    break
                batches.append({k: a[start:start + take] for k, a in arrays.items()})
                total += take
            if total >= config.num_samples:
                break
        return cls(batches, config, source="feeds")

    @classmethod
    def from_texts(cls, texts: Sequence[str], model_dir: str | os.PathLike,
                   config: CalibrationConfig | None = None) -> CalibrationData:
        """Tokenise ``texts`` with the tokenizer saved in ``model_dir`` (``AutoTokenizer``)."""
        config = config or CalibrationConfig()
        texts = [str(t) for t in texts]
        if config.shuffle:
            rng = np.random.default_rng(config.seed)
            texts = [texts[i] for i in rng.permutation(len(texts))]
        if not config.pack:
            texts = texts[: config.num_samples]
        if not texts:
            raise ConfigError("calibration data is empty: give at least one text")
        tokenizer = _load_tokenizer(model_dir)
        if config.pack:
            return cls(_packed_batches(texts, tokenizer, config), config,
                       source=f"texts packed into {config.max_length}-token windows, tokenised with "
                              f"{Path(model_dir).name}")
        order = list(range(len(texts)))
        if config.sort_by_length:
            ids = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]
            lengths = [len(x) for x in ids]
            order = sorted(order, key=lambda i: lengths[i])
        batches = []
        for start in range(0, len(order), config.batch_size):
            chunk = [texts[i] for i in order[start:start + config.batch_size]]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=config.max_length,
                            return_tensors="np")
            batches.append({k: np.asarray(v) for k, v in enc.items()})
        return cls(batches, config, source=f"texts tokenised with {Path(model_dir).name}")

    @classmethod
    def from_dataset(cls, dataset: Any, model_dir: str | os.PathLike, *,
                     config: CalibrationConfig | None = None, split: str = "train",
                     **load_kwargs: Any) -> CalibrationData:
        """From a ``datasets.Dataset`` (or a dataset name loaded with ``datasets.load_dataset``).

        Text columns are tokenised with the folder's tokenizer, image columns processed with its image
        processor. ``split`` and ``load_kwargs`` (e.g. ``data_files=``, ``name=``) are passed to
        ``load_dataset`` when ``dataset`` is a name.
        """
        config = config or CalibrationConfig()
        if isinstance(dataset, str | os.PathLike):
            import datasets

            try:
                dataset = datasets.load_dataset(str(dataset), split=split, **load_kwargs)
            except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
                raise ConfigError(f"cannot load dataset {str(dataset)!r} split {split!r}: "
                                  f"{type(e).__name__}: {e}. Pass a datasets.Dataset, or a local path with "
                                  "data_files=") from e
        if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # a DatasetDict
            raise ConfigError(f"got a DatasetDict with splits {list(dataset.keys())}; pick one, e.g. "
                              "dataset['train']")
        column, is_image = _pick_column(dataset, config.column)
        n = min(config.num_samples, len(dataset))
        if config.shuffle:
            dataset = dataset.shuffle(seed=config.seed)
        if config.pack and not is_image:  # windows, not texts, are counted: read until they are filled
            n = len(dataset)
        rows = dataset.select(range(n))[column]
        if is_image:
            return cls._from_images(rows, model_dir, config)
        data = cls.from_texts([str(t) for t in rows], model_dir, replace(config, shuffle=False))
        packed = f" packed into {config.max_length}-token windows," if config.pack else ""
        data.source = f"dataset column {column!r}{packed} tokenised with {Path(model_dir).name}"
        return data

    @classmethod
    def _from_images(cls, images: list, model_dir: str | os.PathLike,
                     config: CalibrationConfig) -> CalibrationData:
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(str(model_dir))
        except Exception as e:  # transformers raises OSError / ValueError for missing or bad files
            raise ConfigError(f"no image processor in {model_dir} ({type(e).__name__}: {e}); save one there "
                              "or pass CalibrationData.from_feeds(...)") from e
        batches = []
        for start in range(0, len(images), config.batch_size):
            enc = processor(images[start:start + config.batch_size], return_tensors="np")
            batches.append({k: np.asarray(v) for k, v in enc.items()})
        return cls(batches, config, source=f"images processed with {Path(model_dir).name}")

    @classmethod
    def generated(cls, model: ir.Model | str | os.PathLike, config: CalibrationConfig | None = None, *,
                  dims: dict[str, int] | None = None) -> CalibrationData:
        """Data-free: random feeds shaped like the model's declared inputs (token ids drawn over the
        embedding table, masks of ones), ``config.batch_size`` rows by ``config.max_length`` tokens.

        ``dims`` fixes image dimensions by name (``height``, ``width``, ``channels``); for a model given
        by path they default to the image size and channel count of the ``config.json`` beside it."""
        config = config or CalibrationConfig()
        if isinstance(model, str | os.PathLike):
            if dims is None:
                from optimum_prune.passes.validate import image_dims

                dims = image_dims(Path(model).parent)
            model = load_model(model)
        batches = []
        with ort_session(model) as session:
            done = 0
            while done < config.num_samples:
                rows = min(config.batch_size, config.num_samples - done)
                batches.append(generate_feeds(session, model, rows=rows, length=config.max_length,
                                              seed=config.seed + len(batches), dims=dims))
                done += rows
        return cls(batches, config, source="generated")

    # ------------------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The feed dicts, one per ONNX Runtime run."""
        yield from self._batches

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def num_samples(self) -> int:
        """Examples held (rows over all batches)."""
        return sum(_rows(b) for b in self._batches)

    def describe(self) -> dict:
        """JSON-friendly summary for reports."""
        return {"source": self.source, "num_samples": self.num_samples, "batches": len(self._batches),
                "config": self.config.to_dict()}


def _rows(batch: dict[str, np.ndarray]) -> int:
    first = next(iter(batch.values()))
    return int(np.asarray(first).shape[0]) if np.asarray(first).ndim else 1


def _packed_batches(texts: Sequence[str], tokenizer: Any, config: CalibrationConfig
                    ) -> list[dict[str, np.ndarray]]:
    """``config.num_samples`` windows of ``config.max_length`` tokens cut from ``texts`` joined by a
    blank line, tokenised text by text until the windows are filled (see ``CalibrationConfig.pack``)."""
    need = config.num_samples * config.max_length
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for start in range(0, len(texts), 256):
        for ids in tokenizer(list(texts[start:start + 256]), add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.extend(separator)
        if len(stream) >= need:
            break
    windows = len(stream) // config.max_length
    if windows == 0:
        raise ConfigError(f"calibration texts hold {len(stream)} tokens, fewer than one packed window of "
                          f"max_length={config.max_length}; lower max_length or give more text")
    ids = np.asarray(stream[: min(windows, config.num_samples) * config.max_length], dtype=np.int64)
    ids = ids.reshape(-1, config.max_length)
    batches = [ids[i:i + config.batch_size] for i in range(0, len(ids), config.batch_size)]
    return [{"input_ids": b, "attention_mask": np.ones_like(b)} for b in batches]


def _load_tokenizer(model_dir: str | os.PathLike):
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # transformers raises OSError / ValueError / KeyError for missing or bad files
        raise ConfigError(f"no tokenizer in {model_dir} ({type(e).__name__}: {e}); export the model with "
                          "its tokenizer (optimum-cli export onnx does) or pass "
                          "CalibrationData.from_feeds(...)") from e
    if tokenizer.pad_token is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pick_column(dataset: Any, column: str | None) -> tuple[str, bool]:
    names = list(dataset.column_names)
    features = getattr(dataset, "features", {}) or {}

    def is_image(name: str) -> bool:
        return type(features.get(name)).__name__ == "Image" or name in _IMAGE_COLUMNS

    if column is not None:
        if column not in names:
            raise ConfigError(f"column {column!r} not in the dataset; columns: {names}")
        return column, is_image(column)
    for name in _TEXT_COLUMNS:
        if name in names:
            return name, False
    for name in names:
        if is_image(name):
            return name, True
    for name in names:
        if getattr(features.get(name), "dtype", None) in ("string", "large_string"):
            return name, False
    raise ConfigError(f"no text or image column found among {names}; set CalibrationConfig(column=...)")


# ----------------------------------------------------------------------------------------------
# activation statistics


@dataclass(frozen=True)
class StatRequest:
    """Statistics wanted for one tensor: per channel of ``axis``; the Gram matrix too if ``gram``."""

    name: str
    axis: int
    gram: bool = False


@dataclass
class ChannelStats:
    """Per-channel statistics of one tensor along one axis, over every calibration position.

    ``count`` rows were seen (all positions of the other axes, padding excluded); ``sum`` and
    ``sumsq`` have one entry per channel; ``gram`` is ``X^T X`` (channels x channels) when requested.
    """

    name: str
    axis: int
    count: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    gram: np.ndarray | None = None

    def mean(self) -> np.ndarray:
        """Mean of each channel."""
        return self.sum / max(self.count, 1)

    def mean_square(self) -> np.ndarray:
        """Mean of the square of each channel."""
        return self.sumsq / max(self.count, 1)

    def rms(self) -> np.ndarray:
        """Root mean square of each channel."""
        return np.sqrt(self.mean_square())

    def norm(self) -> np.ndarray:
        """L2 norm of each channel over all rows (Wanda's ``||X_j||_2``)."""
        return np.sqrt(self.sumsq)

    def second_moment(self) -> np.ndarray:
        """``X^T X / count`` (raises if the Gram matrix was not requested)."""
        if self.gram is None:
            raise ConfigError(f"no Gram matrix captured for '{self.name}' axis {self.axis}; "
                              "request gram=True")
        return self.gram / max(self.count, 1)

    def add(self, arr: np.ndarray, valid: np.ndarray | None, want_gram: bool) -> None:
        """Accumulate one batch; ``valid`` masks the first two axes ([batch, sequence]) when given."""
        x = np.moveaxis(np.asarray(arr), self.axis, -1)
        if valid is not None:
            x = x[valid]
        channels = x.shape[-1]
        x = x.reshape(-1, channels)
        # one batch's Gram product in float32 (BLAS speed), accumulated over batches in float64
        xg = x if x.dtype == np.float32 else x.astype(np.float64)
        x = x.astype(np.float64, copy=False)
        if self.sum is None:
            self.sum = np.zeros(channels)
            self.sumsq = np.zeros(channels)
            if want_gram:
                self.gram = np.zeros((channels, channels))
        if self.sum.shape[0] != channels:
            raise ConfigError(f"'{self.name}' axis {self.axis} has {channels} channels in one batch and "
                              f"{self.sum.shape[0]} in another")
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sumsq += np.einsum("ij,ij->j", x, x)
        if want_gram:
            self.gram += xg.T @ xg


def capture_activations(model: ir.Model | str | os.PathLike, calibration: CalibrationData,
                        requests: Iterable[StatRequest | tuple[str, int]], *,
                        shapes: dict[str, Shape] | None = None, max_tensors_per_run: int = 16,
                        threads: int = 0) -> dict[tuple[str, int], ChannelStats]:
    """Run ``calibration`` through a clone of ``model`` and return per-channel statistics.

    Args:
        model: the model (an ``onnx_ir`` model, never modified, or a path).
        calibration: the feeds.
        requests: tensors and channel axes, as :class:`StatRequest` or ``(name, axis)``; a tensor may be
            an intermediate value or a graph input.
        shapes: inferred (symbolic) shapes, if already known; used to recognise ``[batch, sequence, ...]``
            tensors whose padding positions are left out. Inferred when needed and not given.
        max_tensors_per_run: tensors fetched per ONNX Runtime run; more tensors mean more passes over the
            data, fewer mean more memory per run.
        threads: ONNX Runtime intra-op threads (0: default).

    Returns:
        ``{(name, axis): ChannelStats}`` for every request.
    """
    if (isinstance(max_tensors_per_run, bool) or not isinstance(max_tensors_per_run, int)
            or max_tensors_per_run < 1):
        raise ConfigError(f"max_tensors_per_run must be an integer >= 1, got {max_tensors_per_run!r}")
    if isinstance(model, str | os.PathLike):
        model = load_model(model)
    wanted: dict[tuple[str, int], bool] = {}
    for r in requests:
        r = r if isinstance(r, StatRequest) else StatRequest(*r)
        wanted[(r.name, r.axis)] = wanted.get((r.name, r.axis), False) or r.gram
    if not wanted:
        return {}
    order: dict[str, int] = {}
    for i, node in enumerate(model.graph):
        for out in node.outputs:
            order[out.name] = i + 1
    graph_inputs = {v.name: v for v in model.graph.inputs}
    for v in graph_inputs:
        order[v] = 0
    unknown = sorted({name for name, _ in wanted if name not in order})
    if unknown:
        raise ConfigError(f"cannot capture {unknown}: not a graph input or node output of the main graph")
    names = sorted({name for name, _ in wanted}, key=lambda n: order[n])
    valid_dims = _token_dims(model)
    masked: set[str] = set()
    if valid_dims is not None:
        if shapes is None:
            shapes = infer_shapes(model)
        for name, axis in wanted:
            s = shapes.get(name)
            if s is not None and len(s) > 2 and tuple(s[:2]) == valid_dims and axis % len(s) >= 2:
                masked.add(name)
    clone = model.clone()
    values = {out.name: out for node in clone.graph for out in node.outputs}
    present = {v.name for v in clone.graph.outputs}
    for name in names:
        if name in values and name not in present:
            clone.graph.outputs.append(values[name])
    stats = {key: ChannelStats(key[0], key[1]) for key in wanted}
    axes_of: dict[str, list[int]] = {}
    for name, axis in wanted:
        axes_of.setdefault(name, []).append(axis)
    with ort_session(clone, threads=threads) as session:
        for start in range(0, len(names), max_tensors_per_run):
            chunk = names[start:start + max_tensors_per_run]
            fetch = [n for n in chunk if n not in graph_inputs]
            for batch in calibration.batches():
                feeds = complete_feeds(session, batch)
                outs = dict(zip(fetch, session.run(fetch, feeds), strict=True)) if fetch else {}
                valid = _valid_mask(batch) if masked else None
                for name in chunk:
                    arr = outs[name] if name in outs else feeds[name]
                    use = valid if (name in masked and valid is not None
                                    and valid.shape == arr.shape[:2]) else None
                    for axis in axes_of[name]:
                        stats[(name, axis)].add(arr, use, wanted[(name, axis)])
    return stats


def _token_dims(model: ir.Model) -> tuple[str, str] | None:
    """The symbolic (batch, sequence) dims of the model's 2-D attention mask input, if it has one."""
    for v in model.graph.inputs:
        if "attention_mask" in v.name.lower() and v.shape is not None and len(v.shape) == 2:
            dims = tuple(d if isinstance(d, str) else getattr(d, "value", d) for d in v.shape)
            if all(isinstance(d, str) for d in dims):
                return dims  # type: ignore[return-value]
    return None


def _valid_mask(batch: dict[str, np.ndarray]) -> np.ndarray | None:
    for k, v in batch.items():
        if "attention_mask" in k.lower() and np.asarray(v).ndim == 2:
            return np.asarray(v) != 0
    return None


__all__ = ["CalibrationConfig", "CalibrationData", "ChannelStats", "StatRequest", "capture_activations"]
