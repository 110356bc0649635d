"""The Train page's Method card: what the run learns from, and each method's own settings.

Supervised fine-tuning (SFT) learns from example answers; DPO, ORPO and SimPO from pairs of a chosen
and a rejected answer; KTO from answers labelled good or bad. The card shows the settings of the
chosen method only (each with its field's documentation as the tooltip), a "Start from" choice for
the usual SFT → preference pipeline (a completed run's adapter, of the same model), and — before
Start — whether the data file fits the method, with the fix: a pairs file under SFT fails only after
the model has loaded, and says less about what to do than a note next to the method can.

The two background reads (the data file's shape, the runs to start from) are plain functions of
paths, run through :class:`BackgroundTask`; they touch no widget.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

from lora_studio.core.config import PAIR_METHODS
from lora_studio.gui.state import AppState
from lora_studio.gui.widgets.forms import Card, Form
from lora_studio.gui.workers import BackgroundTask

#: (value, name in the list, what it learns from: one line under the choice).
METHODS = [
    ("sft", "SFT", "Learn from example answers (supervised fine-tuning)."),
    ("dpo", "DPO", "Prefer the chosen answer over the rejected one (compares with the base model)."),
    ("kto", "KTO", "Learn from answers labelled good or bad (compares with the base model)."),
    ("orpo", "ORPO", "SFT and preference in one step, no reference model."),
    ("simpo", "SimPO", "Length-normalised preference, no reference model."),
]
NAMES = {value: name for value, name, _ in METHODS}
#: Short names: the closed list is narrow; the tooltip (the field's description) says what each does.
DPO_LOSSES = [("sigmoid", "Sigmoid (DPO)"), ("ipo", "IPO"), ("hinge", "Hinge (SLiC)"), ("robust", "Robust")]
NEW_ADAPTER = "A new adapter"
PAGE = "Train"


def method_companions(method: str) -> dict[str, Any]:
    """What choosing ``method`` changes with it: preference methods train on the answers of unpacked
    rows (the config refuses packing and "all tokens" for them), and only they start from an adapter."""
    if method == "sft":
        return {"preference.init_adapter": None}
    return {"data.packing": False, "data.train_on": "assistant"}


# -- background reads (no widgets) -------------------------------------------------------------


def data_kind(path: str, columns: dict[str, str] | None = None, *, sample: int = 20) -> str | None:
    """What a dataset file holds: "pairs" (chosen/rejected), "labels" (KTO's good/bad answers),
    "examples" (conversations for SFT), or None when unknown (missing, unreadable or mixed — the
    Data page says why). Judged, as ``sniff_preference_format`` does, by what most of the first
    ``sample`` records are: the file is read once, however large."""
    from lora_studio.core.data import open_source, resolve_paths
    from lora_studio.core.data.files import RawRecord
    from lora_studio.core.data.formats import best_match
    from lora_studio.core.data.preference import preference_format
    from lora_studio.core.errors import DatasetError

    try:
        records = []
        for item in open_source(resolve_paths(str(path))[0]).records:
            if isinstance(item, RawRecord):
                records.append(item.data)
            if len(records) >= sample:
                break
    except (DatasetError, OSError):
        return None
    kinds = Counter(
        ("labels" if shape == "kto" else "pairs")
        if (shape := preference_format(data))
        else ("examples" if best_match(data, columns) else None)
        for data in records
    )
    kind, count = kinds.most_common(1)[0] if kinds else (None, 0)
    return kind if count * 2 > len(records) else None


def mismatch(method: str, kind: str | None) -> str:
    """The note that the data does not fit the method, with the fix ('' when it fits or is unknown)."""
    name = NAMES.get(method, method.upper())
    if method == "sft" and kind == "pairs":
        return (
            "This file holds chosen/rejected pairs, which SFT cannot learn from — choose DPO, ORPO "
            "or SimPO as the method (or KTO)."
        )
    if method == "sft" and kind == "labels":
        return "This file holds answers labelled good or bad — choose KTO as the method."
    if method in PAIR_METHODS and kind == "labels":
        return (
            f"{name} learns from pairs of a chosen and a rejected answer; this file holds single answers "
            "labelled good or bad — choose KTO, or a file with chosen/rejected pairs."
        )
    if method != "sft" and kind == "examples":
        wanted = "chosen/rejected pairs" + (" or answers labelled good or bad" if method == "kto" else "")
        return (
            f"This file holds example conversations, not preferences — choose SFT as the method, or a "
            f"file with {wanted}."
        )
    return ""


def completed_runs(root: Path, source: str, cancel: threading.Event) -> list[tuple[str, str]]:
    """(run folder, label) of the completed runs of model ``source`` that saved an adapter, newest
    first: what a preference run can start from."""
    from lora_studio.core.runs import list_runs

    found = []
    for run in reversed(list_runs(root)):
        if cancel.is_set():
            break
        try:
            status, config = run.status(), run.config_with_notes()[0]
        except Exception:  # an unreadable folder is the Runs page's to report
            continue
        if status.get("state") != "completed" or config.model.source != source:
            continue
        if not (run.adapter_dir / "adapter_config.json").is_file():
            continue
        name = run.run_id.split("-", 2)[-1] if run.run_id[:8].isdigit() else run.run_id
        method = NAMES.get(config.training.method, config.training.method)
        found.append((str(run.path), f"{name} ({method}, {status.get('step', '?')} steps)"))
    return found


# -- the card ----------------------------------------------------------------------------------


class MethodCard(Card):
    """Method, its explanation, the data check, and the chosen method's own settings."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__("Method", parent)
        self.state = state
        form = Form(state, PAGE)
        self.method = form.add_field(
            "training.method",
            "Training method",
            choices=[(value, name) for value, name, _ in METHODS],
            also=method_companions,
        )
        for index, (_value, _name, text) in enumerate(METHODS):  # each entry explains itself
            self.method.widget.setItemData(index, text, Qt.ItemDataRole.ToolTipRole)  # type: ignore[attr-defined]
        self.add(form)
        self.explanation = QLabel()
        self.explanation.setObjectName("muted")
        self.explanation.setWordWrap(True)
        self.add(self.explanation)
        #: The data does not fit the method: what is wrong and the fix (hidden when it fits).
        self.data_note = QLabel()
        self.data_note.setObjectName("fieldError")
        self.data_note.setWordWrap(True)
        self.data_note.hide()
        self.add(self.data_note)

        self.preference = Form(state, PAGE)  # every preference method
        self.start_from = self.preference.add_field(
            "preference.init_adapter", "Start from", choices=[(None, NEW_ADAPTER)]
        )
        self.preference.add_field("preference.beta", "Beta (strength)", kind="float")
        self.dpo = Form(state, PAGE)
        self.dpo.add_field("preference.loss_type", "Loss", choices=DPO_LOSSES)
        self.dpo.add_field("preference.label_smoothing", "Label smoothing", kind="float", unit="of pairs")
        self.dpo.add_field("preference.sft_weight", "SFT on chosen", kind="float", unit="weight")
        self.simpo = Form(state, PAGE)
        self.simpo.add_field("preference.simpo_gamma", "Target margin (γ)", kind="float")
        self.kto = Form(state, PAGE)
        self.kto.add_field("preference.desirable_weight", "Good answer weight", kind="float")
        self.kto.add_field("preference.undesirable_weight", "Bad answer weight", kind="float")
        for part in (self.preference, self.dpo, self.simpo, self.kto):
            self.add(part)
        #: method -> the settings shown for it (beyond the method itself)
        self.parts: dict[str, list[Form]] = {
            "sft": [],
            "dpo": [self.preference, self.dpo],
            "kto": [self.preference, self.kto],
            "orpo": [self.preference],
            "simpo": [self.preference, self.simpo],
        }

        #: What the data file holds, once read: (data.path, kind); None until the first answer.
        self.data_kind: tuple[str, str | None] | None = None
        self.sniffer = BackgroundTask(self, delay_ms=200)
        self.runs_reader = BackgroundTask(self, delay_ms=100)
        state.config_changed.connect(self._on_config)
        self._show_method()
        self.check_data()

    # -- the chosen method ----------------------------------------------------------------------

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if "training.method" in changed:
            self._show_method()
        if changed & {"data.path", "data.columns"}:
            self.check_data()
        elif "training.method" in changed:
            self._show_note()
        if changed & {"training.method", "model.source", "output.runs_dir"}:
            self.refresh_runs()

    def _show_method(self) -> None:
        method = self.state.config.training.method
        self.explanation.setText(next(text for value, _, text in METHODS if value == method))
        shown = self.parts.get(method, [])
        for part in (self.preference, self.dpo, self.simpo, self.kto):
            part.setVisible(part in shown)
            if part not in shown:
                self._drop_pending(part)

    def _drop_pending(self, part: Form) -> None:
        """A hidden field must not hold Start back: its unfinished edit goes back to the valid value."""
        pending = self.state.pending
        for dotted in part.editors:
            if dotted in pending:
                section, _, name = dotted.partition(".")
                self.state.set_value(dotted, getattr(getattr(self.state.config, section), name))

    def visible_fields(self) -> list[str]:
        """The settings shown for the chosen method (dotted names), the method itself first."""
        shown = self.parts.get(self.state.config.training.method, [])
        return ["training.method", *(d for part in shown for d in part.editors)]

    # -- does the data fit? ---------------------------------------------------------------------

    def check_data(self) -> None:
        """Read the data file's shape in the background; the note follows when it answers."""
        path = self.state.config.data.path
        columns = dict(self.state.config.data.columns or {})
        if self.data_kind is not None and self.data_kind[0] != path:
            self.data_kind = None  # never judge a new file by the old one's shape
            self._show_note()
        self.sniffer.request(
            lambda _cancel: (path, data_kind(path, columns)),
            self._got_kind,
            lambda _error: self._got_kind((path, None)),
        )

    def _got_kind(self, result: tuple[str, str | None]) -> None:
        if result[0] == self.state.config.data.path:
            self.data_kind = result
            self._show_note()

    def mismatch(self) -> str:
        """The note shown now: the data does not fit the chosen method ('' when it does, or unknown)."""
        kind = self.data_kind[1] if self.data_kind else None
        return mismatch(self.state.config.training.method, kind)

    def _show_note(self) -> None:
        text = self.mismatch()
        self.data_note.setText(text)
        self.data_note.setVisible(bool(text))

    # -- the runs to start from -----------------------------------------------------------------

    def runs_root(self) -> Path:
        from lora_studio.core.paths import runs_dir

        return Path(self.state.config.output.runs_dir or runs_dir()).expanduser()

    def refresh_runs(self) -> None:
        """Re-list the completed runs of this model (a preference method only: hidden otherwise)."""
        if self.state.config.training.method == "sft":
            return
        root, source = self.runs_root(), self.state.config.model.source
        self.runs_reader.request(lambda cancel: completed_runs(root, source, cancel), self._show_runs)

    def _show_runs(self, runs: list[tuple[str, str]]) -> None:
        self.start_from.set_choices([(None, NEW_ADAPTER), *runs])
