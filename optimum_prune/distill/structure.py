"""Give a PyTorch model the shapes of a pruned one: resize parameters and the attributes modules use.

Used both to build a student from a pruned ONNX model and to reload a saved student
(:func:`optimum_prune.load_pruned`). Attention heads go through transformers' own ``prune_heads`` where
the architecture implements it (it keeps ``config.pruned_heads``, which ``from_pretrained`` replays);
elsewhere the head-count attributes of attention modules (``num_heads``, ``num_key_value_heads``,
``num_key_value_groups``, ``all_head_size``, ...) are recomputed from the new projection widths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size", "dim_per_head")
QUERY_NAMES = ("query", "q_proj", "q_lin", "q", "wq")
KEY_NAMES = ("key", "k_proj", "k_lin", "k", "wk")


def _submodule(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    owner, _, leaf = dotted.rpartition(".")
    return (root.get_submodule(owner) if owner else root), leaf


def _child_linear(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Linear] | None:
    """The first Linear among ``module``'s descendants whose own name is one of ``names``."""
    for qualified, child in module.named_modules():
        if isinstance(child, nn.Linear) and qualified.rpartition(".")[2] in names:
            return qualified, child
    return None


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> tuple[str | None, int | None]:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return name, value
    return None, None


def attention_modules(model: nn.Module) -> dict[str, dict]:
    """Modules that count attention heads: their head count, head size and query/key projections."""
    found: dict[str, dict] = {}
    for name, module in model.named_modules():
        head_attr, heads = _first_attr(module, HEAD_ATTRS)
        query = _child_linear(module, QUERY_NAMES)
        if head_attr is None or query is None or not heads:
            continue
        size_attr, head_size = _first_attr(module, HEAD_SIZE_ATTRS)
        if head_size is None:
            head_size = query[1].out_features // heads
        key = _child_linear(module, KEY_NAMES)
        kv_attr, kv_heads = _first_attr(module, KV_HEAD_ATTRS)
        found[name] = {"module": module, "head_attr": head_attr, "heads": heads, "head_size": head_size,
                       "query": query, "key": key, "kv_attr": kv_attr, "kv_heads": kv_heads}
    return found


def layer_index(qualified_name: str) -> int | None:
    """The first integer component of a module path (``bert.encoder.layer.3.attention`` -> 3)."""
    for part in qualified_name.split("."):
        if part.isdigit():
            return int(part)
    return None


def removed_heads(model: nn.Module, new_values: dict[str, np.ndarray]) -> dict[int, list[int]]:
    """Per layer, the heads whose query rows are missing from the new query weight (order is kept)."""
    out: dict[int, list[int]] = {}
    for name, info in attention_modules(model).items():
        qname, query = info["query"]
        full = f"{name}.{qname}.weight" if name else f"{qname}.weight"
        new = new_values.get(full)
        if new is None or new.shape[0] == query.weight.shape[0]:
            continue
        dense = query.weight.detach().numpy()
        size = info["head_size"]
        blocks = [dense[h * size:(h + 1) * size] for h in range(info["heads"])]
        kept, h = [], 0
        for j in range(new.shape[0] // size):
            block = new[j * size:(j + 1) * size]
            while h < len(blocks) and not np.array_equal(blocks[h], block):
                h += 1
            if h == len(blocks):
                return {}  # rows were refitted or reordered: not a plain head cut
            kept.append(h)
            h += 1
        layer = layer_index(name)
        if layer is None or layer in out:
            return {}
        out[layer] = [h for h in range(info["heads"]) if h not in kept]
    return out


def supports_prune_heads(model: nn.Module) -> bool:
    """Whether ``model`` implements transformers' ``prune_heads`` (``base_model._prune_heads``)."""
    base = getattr(model, "base_model", None)
    prune = getattr(type(base), "_prune_heads", None) if base is not None else None
    if prune is None:
        return False
    from transformers import PreTrainedModel

    return prune is not getattr(PreTrainedModel, "_prune_heads", None)


def resize(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Give the named parameters and buffers of ``model`` the ``shapes`` (values left uninitialised), create
    Linear biases that ``shapes`` has and the model lacks, then update the attributes modules compute
    with. Returns the names of the tensors resized or created."""
    attention = {name: dict(info) for name, info in attention_modules(model).items()}
    state = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    persistent = set(model.state_dict())
    changed = []
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        owner, leaf = _submodule(model, name)
        current = state.get(name)
        if current is None and name in buffers:
            if tuple(buffers[name].shape) != shape:
                owner.register_buffer(leaf, torch.empty(shape, dtype=buffers[name].dtype),
                                      persistent=name in persistent)
                changed.append(name)
            continue
        if current is None:
            if leaf != "bias" or not isinstance(owner, nn.Linear) or owner.bias is not None:
                continue  # not a tensor of this model: load_state_dict reports it
            owner.bias = nn.Parameter(torch.zeros(shape, dtype=owner.weight.dtype))
            changed.append(name)
            continue
        if tuple(current.shape) != shape:
            setattr(owner, leaf, nn.Parameter(torch.empty(shape, dtype=current.dtype),
                                              requires_grad=current.requires_grad))
            changed.append(name)
    sync_attributes(model, attention)
    return changed


def sync_attributes(model: nn.Module, attention: dict[str, dict] | None = None) -> None:
    """Make module attributes agree with parameter shapes: Linear/Conv/Embedding/norm sizes, head counts.

    ``attention``: :func:`attention_modules` taken before resizing (it holds the head sizes, which a
    resize never changes); taken now if not given.
    """
    attention = attention_modules(model) if attention is None else attention
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.modules.conv._ConvNd):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.out_channels = weight.shape[0]
            if depthwise:
                module.groups = module.in_channels = weight.shape[0]
            else:
                module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.Embedding):
            module.num_embeddings, module.embedding_dim = weight.shape
        elif isinstance(module, nn.LayerNorm) and module.normalized_shape:
            module.normalized_shape = tuple(weight.shape[-len(module.normalized_shape):])
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = weight.shape[0]
        elif isinstance(module, nn.GroupNorm):
            module.num_channels = weight.shape[0]
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D
            module.nf = weight.shape[1]
    for info in attention.values():
        module, size = info["module"], info["head_size"]
        heads = info["query"][1].out_features // size
        setattr(module, info["head_attr"], heads)
        if hasattr(module, "all_head_size"):
            module.all_head_size = heads * size
        kv_heads = heads
        if info["kv_attr"] is not None and info["key"] is not None:
            kv_heads = info["key"][1].out_features // size
            setattr(module, info["kv_attr"], kv_heads)
        if hasattr(module, "num_key_value_groups") and kv_heads:
            module.num_key_value_groups = heads // kv_heads


_FFN_CONFIG_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "encoder_ffn_dim",
                    "decoder_ffn_dim", "d_ff")


def uniform_config_updates(teacher: nn.Module, student: nn.Module) -> dict[str, int]:
    """Config values that describe the student exactly when every layer shrank alike.

    A config FFN width (``intermediate_size``, ...) is updated when every Linear that produced that
    width in the teacher has the same new width in the student.
    """
    config = getattr(teacher, "config", None)
    if config is None:
        return {}
    widths_of: dict[int, set[int]] = {}
    student_modules = dict(student.named_modules())
    for name, module in teacher.named_modules():
        if isinstance(module, nn.Linear) and name in student_modules:
            widths_of.setdefault(module.out_features, set()).add(student_modules[name].out_features)
    updates = {}
    for key in _FFN_CONFIG_KEYS:
        width = getattr(config, key, None)
        if isinstance(width, int) and width in widths_of and len(widths_of[width]) == 1:
            new = next(iter(widths_of[width]))
            if new != width:
                updates[key] = new
    return updates
