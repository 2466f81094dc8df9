"""Importance criteria: small callables that score each unit of a pruning group (higher = keep).

=============  =======================================================================  ===========
name           what it measures                                                         data
=============  =======================================================================  ===========
``l1``/``l2``  Lp norm of the unit's root weights                                       none
``tree``       ONNXPruner tree-level: normalised magnitudes of every tensor of the group  none
``activation`` Wanda: ``|W|`` of the consumer rows times their input activation RMS      required
``fluctuation`` FLAP: input activation variance times the consumer rows' squared L2 norm  required
``obs``        OBS group saliency of the consumer rows, compensation assumed             optional
``fidelity``   PAODING: greedy removal by least change of the model outputs              optional
=============  =======================================================================  ===========

``get_importance(name, calibration)`` builds one with its defaults; construct the classes directly to
change their options.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from types import MappingProxyType

from optimum_prune.calibration import CalibrationData
from optimum_prune.configuration import IMPORTANCE_CRITERIA
from optimum_prune.errors import ConfigError
from optimum_prune.importance.activation import ActivationImportance, FluctuationImportance
from optimum_prune.importance.base import Importance, LeafInput, leaf_inputs, producer_root
from optimum_prune.importance.fidelity import FidelityImportance
from optimum_prune.importance.magnitude import MagnitudeImportance, TreeImportance
from optimum_prune.importance.obs import OBSImportance, obs_saliency

__all__ = [
    "ActivationImportance",
    "FidelityImportance",
    "FluctuationImportance",
    "Importance",
    "LeafInput",
    "MagnitudeImportance",
    "OBSImportance",
    "TreeImportance",
    "criterion_class",
    "get_importance",
    "leaf_inputs",
    "obs_saliency",
    "producer_root",
]


_CRITERIA: Mapping[str, tuple[type[Importance], Mapping[str, object]]] = MappingProxyType({
    "l2": (MagnitudeImportance, {"p": 2}), "l1": (MagnitudeImportance, {"p": 1}),
    "tree": (TreeImportance, {}),
    "activation": (ActivationImportance, {}),
    "fluctuation": (FluctuationImportance, {}),
    "obs": (OBSImportance, {}),
    "fidelity": (FidelityImportance, {}),
})


def criterion_class(name: str) -> tuple[type[Importance], dict]:
    """The class of the criterion called ``name`` and the options its name fixes (``p`` for ``l1`` /
    ``l2``); ``cls.uses_calibration`` says whether it takes calibration data, ``cls.requires_calibration``
    whether it cannot score without it.

    Raises:
        ConfigError: unknown name.
    """
    if name not in _CRITERIA:
        raise ConfigError(f"unknown importance criterion {name!r}; allowed: {IMPORTANCE_CRITERIA}")
    cls, fixed = _CRITERIA[name]
    return cls, dict(fixed)


def get_importance(name: str, calibration: CalibrationData | None = None, **options) -> Importance:
    """The criterion called ``name`` with its default options.

    Args:
        name: one of ``"l1"``, ``"l2"``, ``"tree"``, ``"activation"``, ``"fluctuation"``, ``"obs"``,
            ``"fidelity"``.
        calibration: calibration data, required by ``activation`` and ``fluctuation``, used by ``obs``
            (Gram matrices instead of the weight proxy) and ``fidelity`` (its first batch instead of
            generated inputs).
        options: keyword arguments of the criterion's class (e.g. ``rounds=1`` for ``fidelity``).

    Raises:
        ConfigError: unknown name, or ``activation`` without calibration data.
    """
    cls, defaults = criterion_class(name)
    if cls.uses_calibration:
        defaults = {**defaults, "calibration": calibration}
    clash = sorted(set(options) & set(defaults))
    if clash:
        raise ConfigError(f"importance_options cannot set {clash} for {name!r} (chosen by the name / the "
                          "calibration argument)")
    try:
        criterion: Importance = cls(**defaults, **options)
    except TypeError as e:
        raise ConfigError(f"bad importance_options {options} for {name!r} ({cls.__name__}): {e}") from e
    if calibration is not None and not criterion.uses_calibration:
        warnings.warn(f"importance {name!r} is data-free: the calibration data is not used for scoring",
                      stacklevel=2)
    return criterion
