"""The Train page's hyperparameter form, grouped the way people think about a run.

Schedule, batch, optimizer, checkpoints, evaluation, samples, output: the common settings are in
view, the rest folded one click away. Labels are plain words with units; each tooltip is the
field's own documentation (what it does and what it costs).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QVBoxLayout, QWidget

from lora_studio.gui.state import AppState
from lora_studio.gui.widgets.forms import Card, Foldable, Form

SCHEDULERS = [("linear", "Linear decay"), ("cosine", "Cosine"), ("constant_with_warmup", "Constant")]
OPTIMIZERS = [
    ("adamw_torch", "AdamW"),
    ("adamw_bnb_8bit", "AdamW 8-bit"),
    ("paged_adamw_8bit", "Paged AdamW 8-bit"),
    ("paged_adamw_32bit", "Paged AdamW 32-bit"),
]
PAGE = "Train"


def _advanced(card: Card, state: AppState, title: str) -> Form:
    fold = Foldable(title)
    form = Form(state, PAGE, fold.content)
    QVBoxLayout(fold.content).addWidget(form)
    card.add(fold)
    return form


def build_form(state: AppState) -> list[QWidget]:
    """The cards of the form, top to bottom."""
    schedule = Card("Schedule")
    form = Form(state, PAGE)
    form.add_field("training.epochs", "Epochs", kind="float", unit="passes")
    form.add_field(
        "training.max_steps",
        "Stop after",
        kind="optional_int",
        unit="steps",
        minimum=1,
        none_text="Use epochs",
    )
    form.add_field("training.learning_rate", "Learning rate", kind="float")
    form.add_field("training.scheduler", "Learning rate schedule", choices=SCHEDULERS)
    form.add_field("training.warmup_steps", "Warm-up", unit="steps")
    schedule.add(form)
    _advanced(schedule, state, "Advanced: warm-up as a fraction").add_field(
        "training.warmup_ratio", "Warm-up fraction", kind="float", unit="of all steps"
    )

    batch = Card("Batch")
    form = Form(state, PAGE)
    batch_size = form.add_field(
        "training.batch_size", "Batch size", unit="examples", minimum=1, maximum=65536
    )

    def batch_unit(config: Any, _changed: Any = None) -> None:
        """A batch holds pairs for DPO, ORPO and SimPO (each two sequences), answers for KTO."""
        unit = {"sft": "examples", "kto": "answers"}.get(config.training.method, "pairs")
        if batch_size.unit is not None:
            batch_size.unit.setText(unit)

    state.config_changed.connect(batch_unit)
    batch_unit(state.config)
    form.add_field("training.grad_accum", "Accumulate gradients", unit="steps", minimum=1, maximum=65536)
    form.add_field(
        "training.gradient_checkpointing",
        "Gradient checkpointing (less memory, slower)",
        # offloading "on" needs checkpointing: turning it off hands the choice back to "auto"
        also=lambda on: {} if on else {"training.checkpoint_offload": "auto"},
    )
    batch.add(form)

    optimizer = Card("Optimizer")
    form = Form(state, PAGE)
    form.add_field("training.optimizer", "Optimizer", choices=OPTIMIZERS)
    optimizer.add(form)
    more = _advanced(optimizer, state, "Advanced: weight decay, clipping, seed")
    more.add_field("training.weight_decay", "Weight decay", kind="float")
    more.add_field("training.max_grad_norm", "Clip gradients at", kind="float", unit="norm")
    more.add_field("training.seed", "Random seed", maximum=2**31 - 1)

    checkpoints = Card("Checkpoints and logging")
    form = Form(state, PAGE)
    form.add_field("training.save_steps", "Checkpoint every", unit="steps", minimum=1)
    form.add_field("training.save_total_limit", "Keep at most", unit="checkpoints", minimum=1)
    checkpoints.add(form)
    _advanced(checkpoints, state, "Advanced: logging interval").add_field(
        "training.logging_steps", "Log every", unit="steps", minimum=1
    )

    evaluation = Card("Evaluation", subtitle="Set how much data to hold out on the Data page.")
    form = Form(state, PAGE)
    form.add_field(
        "training.eval_steps",
        "Evaluate every",
        kind="optional_int",
        unit="steps",
        minimum=1,
        none_text="At each checkpoint",
    )
    evaluation.add(form)

    samples = Card("Sample answers", subtitle="Answered before and after training, to show what changed.")
    form = Form(state, PAGE)
    form.add_field("training.sample_prompts", "Prompts, one a line", kind="lines")
    form.add_field("training.sample_max_new_tokens", "Answer length", unit="tokens", minimum=1, maximum=4096)
    samples.add(form)

    output = Card("Output")
    form = Form(state, PAGE)
    form.add_field("output.run_name", "Run name")
    output.add(form)
    _advanced(output, state, "Advanced: runs folder").add_field(
        "output.runs_dir", "Runs folder", kind="optional_text"
    )
    return [schedule, batch, optimizer, checkpoints, evaluation, samples, output]
