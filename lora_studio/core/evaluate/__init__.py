"""Evaluate: score a fine-tune against its base on held-out examples, with honest error bars.

``inputs`` loads the examples (a file or a run's eval split) and the models to compare;
``model`` loads each one and generates answers or token losses; ``metrics`` picks the measure the
references call for (exact match, classification, token F1, ROUGE-L, chrF, BLEU); ``scoring``
scores every example; ``bootstrap`` gives paired confidence intervals; ``run`` does the whole
evaluation and saves it in the run folder. Depends on ``chat``, ``data`` and the base.
"""

from lora_studio.core.evaluate.bootstrap import Interval, interval, mean_of, paired_difference, ratio_of
from lora_studio.core.evaluate.inputs import EvalItem, EvalSet, EvaluationError, ModelSpec, load_eval_set
from lora_studio.core.evaluate.metrics import METRIC_CHOICES, choose_metric
from lora_studio.core.evaluate.run import (
    EvalOptions,
    EvalProgress,
    EvalReport,
    ModelResult,
    display_labels,
    evaluate,
    list_evaluations,
    load_examples,
    sample_examples,
    task_metric,
)
from lora_studio.core.evaluate.time_left import TimeLeft

__all__ = [
    "METRIC_CHOICES",
    "EvalItem",
    "EvalOptions",
    "EvalProgress",
    "EvalReport",
    "EvalSet",
    "EvaluationError",
    "Interval",
    "ModelResult",
    "ModelSpec",
    "TimeLeft",
    "choose_metric",
    "display_labels",
    "evaluate",
    "interval",
    "list_evaluations",
    "load_eval_set",
    "load_examples",
    "mean_of",
    "paired_difference",
    "ratio_of",
    "sample_examples",
    "task_metric",
]
