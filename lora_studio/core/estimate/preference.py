"""Precise mode for the preference methods: one DPO, KTO, ORPO or SimPO step, as TRL's trainers take it.

What the engine's trainers do to the model and the batch, and which of it is TRL's own code here:

- every method: TRL's ``disable_dropout_in_model`` (real), and accelerate's wrapper of the trained
  model's ``forward`` on a GPU — bf16/fp16 autocast around the forward and every 16-bit output
  converted to fp32 (``accelerate.utils.convert_outputs_to_fp32``, real). The loss itself runs
  outside autocast, as in the Trainer.
- DPO and KTO: TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``, real) computes the
  per-token log-probabilities in tiles of positions × vocabulary. The reference is the same model
  with the adapter off, under ``torch.no_grad`` with gradient checkpointing switched off (TRL's
  ``use_adapter`` and ``disable_gradient_checkpointing``, real). The few lines between those calls
  (labels from the completion mask, summing log-probabilities, the sigmoid / KTO loss on per-row
  scalars) are *reproduced* from ``DPOTrainer._compute_loss`` and ``KTOTrainer._compute_loss``,
  because their metrics call ``.item()``, which fake tensors cannot answer; what they leave out
  allocates a handful of per-row scalars.
- ORPO and SimPO: TRL's own ``concatenated_forward`` and ``odds_ratio_loss`` / ``cpo_loss`` run
  (real), on a trainer instance made without ``Trainer.__init__`` (which would build an
  accelerator, read datasets and move the model) holding only the attributes those methods read.
  They build the full logits of every chosen and rejected sequence.

The batch comes from the engine's own collator (``collate_preferences``): rows of ``seq_len``
tokens, the later rows one token shorter so that the batch is padded as a real one is. Every
position counts as an answer token (on a GPU the fused head scores answer positions only): an
upper bound.
"""

from __future__ import annotations

from types import MethodType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_studio.core.estimate.request import Plan

#: TRL's defaults for the settings that shape the step (none changes memory).
BETA = 0.1


def prepare_policy(model: Any, plan: Plan) -> Any:
    """What the method's TRL trainer and accelerate do to the engine's model before training."""
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    disable_dropout_in_model(model)
    if plan.method == "dpo":
        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    elif plan.method == "kto":
        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits"))
    if plan.autocast:
        import torch
        from accelerate.utils import convert_outputs_to_fp32

        autocast = torch.autocast("cpu", dtype=plan.torch_dtype)  # CUDA's autocast, simulated on CPU
        forward = autocast(model.forward.__func__)
        model.forward = MethodType(convert_outputs_to_fp32(forward), model)
    return model


def preference_batch(plan: Plan, pad_token_id: int) -> dict[str, Any]:
    """The engine's collated batch: ``plan.batch_size`` pairs (KTO: answers) of up to ``plan.seq_len``
    tokens per answer."""
    from lora_studio.core.data import collate_preferences

    def tokens(row: int, extra: int = 0) -> list[int]:
        return [1] * (plan.seq_len - (1 if row + extra else 0))

    features: list[dict[str, Any]] = []
    for row in range(plan.batch_size):
        if plan.method == "kto":
            features.append({"ids": tokens(row), "labels": tokens(row), "label": row % 2 == 0})
        else:  # the rejected answers come after all chosen ones in DPO's batch: pad those too
            features.append(
                {
                    "chosen_ids": tokens(row),
                    "chosen_labels": tokens(row),
                    "rejected_ids": tokens(row, 1),
                    "rejected_labels": tokens(row, 1),
                }
            )
    return collate_preferences(plan.method, pad_token_id, plan.seq_len)(features)


def preference_loss(model: Any, batch: dict[str, Any], plan: Plan) -> Any:
    """The method's training loss for ``batch`` (its forward passes, graph and all)."""
    if plan.method == "dpo":
        return _dpo_loss(model, batch)
    if plan.method == "kto":
        return _kto_loss(model, batch)
    return _cpo_family_loss(model, batch, plan)


def _reference_context(model: Any) -> Any:
    """TRL's reference forward: no graph, checkpointing off, the adapter switched off (or the frozen
    "ref" copy of the starting adapter switched on, when the run keeps one)."""
    import contextlib

    import torch
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(disable_gradient_checkpointing(model, {"use_reentrant": False}))
    stack.enter_context(use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None))
    return stack


def _log_probs(model: Any, input_ids: Any, attention_mask: Any, completion_mask: Any) -> Any:
    """Summed answer log-probabilities per row through the fused head (``model(..., fused_lm_head=True)``)."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    outputs = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, labels=labels, fused_lm_head=True
    )
    return outputs.log_probs[:, -(completion_mask.shape[1] - 1) :].sum(dim=1)


def _dpo_loss(model: Any, batch: dict[str, Any]) -> Any:
    """``DPOTrainer._compute_loss`` with the sigmoid loss: policy on chosen+rejected, then the reference."""
    import torch.nn.functional as F

    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    chosen, rejected = _log_probs(model, *args).chunk(2, dim=0)
    with _reference_context(model):
        ref_chosen, ref_rejected = _log_probs(model, *args).chunk(2, dim=0)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(BETA * margin).mean()


def _kto_loss(model: Any, batch: dict[str, Any]) -> Any:
    """``KTOTrainer._compute_loss``: the KL batch without a graph, the answers with one, then the reference
    on both without."""
    import torch
    import torch.nn.functional as F

    kl_args = (batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    with torch.no_grad():
        kl_logps = _log_probs(model, *kl_args)
    logps = _log_probs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with _reference_context(model):
        ref_kl_logps = _log_probs(model, *kl_args)
        ref_logps = _log_probs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    kl = (kl_logps - ref_kl_logps).mean().clamp(min=0)
    good = batch["label"].to(logps.device)
    ratio = logps - ref_logps
    losses = torch.where(good, 1 - F.sigmoid(BETA * (ratio - kl)), 1 - F.sigmoid(BETA * (kl - ratio)))
    return losses.mean()


def _cpo_family_loss(model: Any, batch: dict[str, Any], plan: Plan) -> Any:
    """ORPO and SimPO: TRL's ``concatenated_forward`` and loss on the engine's batch."""
    import torch

    trainer = _loss_holder(plan.method, model)
    chosen_logps, rejected_logps, _, _, nll = trainer.concatenated_forward(model, batch)[:5]
    if plan.method == "orpo":
        losses = trainer.odds_ratio_loss(chosen_logps, rejected_logps)[0]
        return nll - losses.mean()
    losses = trainer.cpo_loss(chosen_logps, rejected_logps)[0]
    return losses.mean() + trainer.cpo_alpha * nll.to(torch.float32)


def _loss_holder(method: str, model: Any) -> Any:
    """An ORPO/CPO trainer object carrying just what its loss methods read (the engine's settings).

    ``Trainer.__init__`` is skipped: it would build an accelerator, read datasets and move the model.
    """
    import torch

    pad = model.config.pad_token_id or 0
    common = {
        "is_encoder_decoder": False,
        "aux_loss_enabled": False,
        "beta": BETA,
        "label_smoothing": 0.0,
        "accelerator": _Device(torch.device("cpu")),
    }
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        trainer = ORPOTrainer.__new__(ORPOTrainer)
        vars(trainer).update(common, padding_value=pad)
    else:  # SimPO is TRL's CPO trainer with loss_type="simpo" and cpo_alpha=0, as the engine sets it
        from trl.experimental.cpo import CPOTrainer

        trainer = CPOTrainer.__new__(CPOTrainer)
        vars(trainer).update(
            common, pad_token_id=pad, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.5, alpha=0.0
        )
    return trainer


class _Device:
    """The one thing the ORPO/CPO losses read of the trainer's accelerator: its device."""

    def __init__(self, device: Any) -> None:
        self.device = device
