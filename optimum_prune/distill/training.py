"""Knowledge-distillation training of a pruned student with the Hugging Face ``Trainer``.

The ``Trainer`` runs on ``accelerate``, so the same code trains on a CPU, one GPU, or several GPUs and
machines under ``accelerate launch`` unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from optimum_prune.distill.loss import DistillationLoss
from optimum_prune.errors import ConfigError


def _number(value: Any, name: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ConfigError(f"distillation {name} must be a number {'>' if strict else '>='} {minimum}; "
                          f"got {value!r}")


@dataclasses.dataclass
class DistillationConfig:
    """Options of knowledge distillation.

    Args:
        temperature, alpha_kd, alpha_ce, alpha_hidden: the loss (see :class:`DistillationLoss`).
        learning_rate: AdamW learning rate (linear decay after ``warmup_ratio``).
        epochs: passes over the training examples (ignored when ``max_steps`` is set).
        max_steps: optimisation steps (``None``: ``epochs`` decides).
        batch_size: examples per step (per device).
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the steps with a linear warm-up.
        seed: seed of the data order and of anything random in training.
        logging_steps: steps between two loss records.
        freeze: parameters left untrained, as ``fnmatch`` patterns of their names (e.g.
            ``["*word_embeddings*"]``: the embedding table is half of a small BERT's parameters, and its
            AdamW update a large share of a CPU step).
        group_by_length: batch examples of similar length together (less padding, faster steps).
        progress: show the ``Trainer``'s progress bar.
    """

    temperature: float = 2.0
    alpha_kd: float = 1.0
    alpha_ce: float = 0.0
    alpha_hidden: float = 0.0
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    logging_steps: int = 10
    freeze: tuple[str, ...] = ()
    group_by_length: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.loss()  # validates temperature and weights
        if isinstance(self.freeze, str):
            self.freeze = (self.freeze,)
        if not isinstance(self.freeze, list | tuple) or not all(isinstance(p, str) for p in self.freeze):
            raise ConfigError(f"distillation freeze must be a list of name patterns; got {self.freeze!r}")
        self.freeze = tuple(self.freeze)
        _number(self.learning_rate, "learning_rate", strict=True)
        _number(self.epochs, "epochs", strict=True)
        _number(self.weight_decay, "weight_decay")
        _number(self.warmup_ratio, "warmup_ratio")
        if self.warmup_ratio >= 1:
            raise ConfigError(f"distillation warmup_ratio must be < 1; got {self.warmup_ratio!r}")
        for name in ("batch_size", "logging_steps") + (("max_steps",) if self.max_steps is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"distillation {name} must be an integer >= 1; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"distillation seed must be an integer; got {self.seed!r}")

    def loss(self, hidden_kept: list[int] | None = None) -> DistillationLoss:
        """The loss these options describe."""
        return DistillationLoss(temperature=self.temperature, alpha_kd=self.alpha_kd, alpha_ce=self.alpha_ce,
                                alpha_hidden=self.alpha_hidden, hidden_kept=hidden_kept)


@dataclasses.dataclass
class DistillationResult:
    """What training did: steps, time, and the training loss along the way."""

    steps: int
    seconds: float
    history: list[dict[str, float]]
    loss_before: float | None = None
    loss_after: float | None = None

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return dataclasses.asdict(self)


def _kd_trainer_class():
    from transformers import Trainer

    class KDTrainer(Trainer):
        """A ``Trainer`` whose loss is the distillation loss against a frozen teacher."""

        def __init__(self, *args, teacher: torch.nn.Module, kd_loss: DistillationLoss, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.kd_loss = kd_loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, out_s = kd_forward(model, self.teacher, dict(inputs), self.kd_loss)
            return (loss, out_s) if return_outputs else loss

    return KDTrainer


def kd_forward(student, teacher, inputs: dict, kd_loss: DistillationLoss):
    """The distillation loss of one batch (labels are taken out of ``inputs`` for the loss)."""
    labels = inputs.pop("labels", None)
    hidden = kd_loss.alpha_hidden > 0
    out_s = student(**inputs, output_hidden_states=hidden, return_dict=True)
    with torch.no_grad():
        out_t = teacher(**inputs, output_hidden_states=hidden, return_dict=True)
    loss, _ = kd_loss(out_s, out_t, labels=labels, attention_mask=inputs.get("attention_mask"))
    return loss, out_s


def kd_loss_on(student, teacher, examples: Sequence[dict], kd_loss: DistillationLoss, collator, *,
               batch_size: int = 32) -> float:
    """Mean distillation loss over ``examples`` (no gradients, evaluation mode)."""
    was = student.training
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collator(list(examples[start:start + batch_size]))
                loss, _ = kd_forward(student, teacher, dict(batch), kd_loss)
                n = len(batch["input_ids"] if "input_ids" in batch else next(iter(batch.values())))
                total += float(loss) * n
                count += n
    finally:
        student.train(was)
    return total / max(count, 1)


def _freeze(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Stop gradients of the parameters whose names match ``patterns``; returns them (to unfreeze)."""
    import fnmatch

    if not patterns:
        return []
    frozen = [p for name, p in model.named_parameters()
              if p.requires_grad and any(fnmatch.fnmatch(name, pat) for pat in patterns)]
    if not frozen:
        names = [n for n, _ in model.named_parameters()][:6]
        raise ConfigError(f"distillation freeze patterns {list(patterns)} match no parameter (names look "
                          f"like {names})")
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def distill(student: torch.nn.Module, teacher: torch.nn.Module, train_examples: Sequence[dict],
            config: DistillationConfig | None = None, *, collator=None,
            eval_examples: Sequence[dict] | None = None, hidden_kept: list[int] | None = None,
            ) -> DistillationResult:
    """Train ``student`` in place to match ``teacher`` on ``train_examples`` (encoded model inputs).

    Args:
        student: the pruned model (see :func:`~optimum_prune.distill.build_student`).
        teacher: the dense model; frozen.
        train_examples: dicts of model inputs per example (``labels`` when ``alpha_ce`` > 0).
        config: training options.
        collator: batches examples (e.g. ``DataCollatorWithPadding``); default: stack tensors.
        eval_examples: when given, the distillation loss on them is measured before and after training.
        hidden_kept: the teacher's hidden positions the student kept, when the hidden size was pruned.
    """
    from transformers import default_data_collator, set_seed

    config = config or DistillationConfig()
    if not len(train_examples):
        raise ConfigError("distillation needs training examples; the dataset is empty")
    if config.alpha_ce and "labels" not in train_examples[0]:
        raise ConfigError("distillation alpha_ce > 0 needs labels in the training examples (a label column "
                          "in the dataset); set alpha_ce: 0 for soft targets only")
    collator = collator or default_data_collator
    kd_loss = config.loss(hidden_kept)
    set_seed(config.seed)
    frozen = _freeze(student, config.freeze)
    # the trainer freezes the teacher and puts it in eval mode: both are given back afterwards, so the
    # caller's model is unchanged (a student built from it later must still be trainable)
    teacher_flags = [(p, p.requires_grad) for p in teacher.parameters()]
    teacher_training = teacher.training
    try:
        output, seconds, history, before = _train(student, teacher, train_examples, config, kd_loss, collator,
                                                  eval_examples)
        student.eval()
        after = kd_loss_on(student, teacher, eval_examples, kd_loss, collator) if eval_examples else None
    finally:
        for param, flag in teacher_flags:
            param.requires_grad_(flag)
        teacher.train(teacher_training)
        for param in frozen:
            param.requires_grad_(True)
    return DistillationResult(steps=int(output.global_step), seconds=round(seconds, 2), history=history,
                              loss_before=before, loss_after=after)


def _train(student, teacher, train_examples, config: DistillationConfig, kd_loss: DistillationLoss, collator,
           eval_examples):
    """The ``Trainer`` run of :func:`distill`: (train output, seconds, loss history, eval loss before)."""
    from transformers import TrainingArguments

    before = kd_loss_on(student, teacher, eval_examples, kd_loss, collator) if eval_examples else None
    with tempfile.TemporaryDirectory(prefix="optimum-prune-kd-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate, num_train_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio, seed=config.seed,
            data_seed=config.seed, logging_steps=config.logging_steps, save_strategy="no", report_to=[],
            disable_tqdm=not config.progress, remove_unused_columns=False, dataloader_num_workers=0,
            group_by_length=config.group_by_length and "input_ids" in train_examples[0],
        )
        trainer = _kd_trainer_class()(model=student, args=args, train_dataset=list(train_examples),
                                      data_collator=collator, teacher=teacher, kd_loss=kd_loss)
        start = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - start
        history = [{"step": int(e["step"]), "loss": float(e["loss"])}
                   for e in trainer.state.log_history if "loss" in e]
    return output, seconds, history, before
