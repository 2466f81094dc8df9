"""The distillation loss: soft targets from the teacher, optional hard labels and hidden states.

``loss = alpha_kd * KL(softmax(t / T) || softmax(s / T)) * T^2 + alpha_ce * CE(s, labels)
+ alpha_hidden * mean_l MSE(h_s[l], h_t[l][..., kept])``

For models without logits (feature extraction) the soft-target term is the MSE between the student's
and the teacher's ``last_hidden_state``. Token-level outputs (language models) are averaged over the
tokens the attention mask keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from optimum_prune.errors import ConfigError


@dataclass
class DistillationLoss:
    """Callable KD loss; weights and temperature as in Hinton et al. (2015), hidden-state MSE as in
    TinyBERT / Sanh et al. (2019).

    Args:
        temperature: softmax temperature ``T`` (> 0).
        alpha_kd: weight of the soft-target term.
        alpha_ce: weight of the hard-label cross-entropy (needs ``labels``).
        alpha_hidden: weight of the hidden-state MSE (every layer's output).
        hidden_kept: positions of the teacher's hidden size the student kept (``None``: all).
    """

    temperature: float = 2.0
    alpha_kd: float = 1.0
    alpha_ce: float = 0.0
    alpha_hidden: float = 0.0
    hidden_kept: list[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, int | float) or not self.temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0; got {self.temperature!r}")
        for name in ("alpha_kd", "alpha_ce", "alpha_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"distillation {name} must be a number >= 0; got {value!r}")
        if not (self.alpha_kd or self.alpha_ce or self.alpha_hidden):
            raise ConfigError("distillation needs a loss: alpha_kd, alpha_ce or alpha_hidden > 0")

    def __call__(self, student_out, teacher_out, *, labels: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and its parts (as floats, for logging)."""
        parts: dict[str, torch.Tensor] = {}
        s_logits, t_logits = _get(student_out, "logits"), _get(teacher_out, "logits")
        if self.alpha_kd:
            if s_logits is not None and t_logits is not None:
                parts["kd"] = self.alpha_kd * soft_target_loss(s_logits, t_logits, self.temperature,
                                                               attention_mask)
            else:
                s_h, t_h = _get(student_out, "last_hidden_state"), _get(teacher_out, "last_hidden_state")
                if s_h is None or t_h is None:
                    raise ValueError("the outputs have neither logits nor last_hidden_state to distil")
                parts["kd"] = self.alpha_kd * _masked_mse(s_h, self._kept(t_h, s_h), attention_mask)
        if self.alpha_ce:
            if labels is None or s_logits is None:
                raise ValueError("alpha_ce > 0 needs labels in the data and logits in the outputs")
            if labels.dim() != s_logits.dim() - 1:
                raise ValueError(f"alpha_ce > 0: labels of shape {list(labels.shape)} do not label the "
                                 f"logits of shape {list(s_logits.shape)} (one label per example or per "
                                 "token)")
            parts["ce"] = self.alpha_ce * F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]),
                                                          labels.reshape(-1), ignore_index=-100)
        if self.alpha_hidden:
            s_hs, t_hs = _get(student_out, "hidden_states"), _get(teacher_out, "hidden_states")
            if not s_hs or not t_hs or len(s_hs) != len(t_hs):
                raise ValueError("alpha_hidden > 0 needs hidden_states of equal depth from both models")
            mses = [_masked_mse(s, self._kept(t, s), attention_mask) for s, t in zip(s_hs, t_hs, strict=True)]
            parts["hidden"] = self.alpha_hidden * torch.stack(mses).mean()
        if not parts:
            raise ValueError("every loss weight is zero")
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _kept(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if teacher.shape[-1] == student.shape[-1]:
            return teacher
        if self.hidden_kept is None or len(self.hidden_kept) != student.shape[-1]:
            raise ValueError(f"teacher hidden size {teacher.shape[-1]} != student {student.shape[-1]} and no "
                             "kept positions of the pruned hidden size are known")
        index = torch.as_tensor(self.hidden_kept, device=teacher.device)
        return teacher.index_select(-1, index)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over examples (or kept tokens)."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1)  # per example or per token
    if kl.ndim == 2 and attention_mask is not None and attention_mask.shape == kl.shape:
        mask = attention_mask.to(kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp(min=1) * t * t
    return kl.mean() * t * t


def _masked_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (s.float() - t.float()).pow(2).mean(-1)
    if err.ndim == 2 and mask is not None and mask.shape == err.shape:
        m = mask.to(err.dtype)
        return (err * m).sum() / m.sum().clamp(min=1)
    return err.mean()


def _get(output, key: str):
    if isinstance(output, dict) or hasattr(output, "keys"):
        return output.get(key) if key in output else None
    return getattr(output, key, None)
