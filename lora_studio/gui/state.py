"""The app's shared state: the one current ``RunConfig`` every page reads and edits, and its signals.

Pages and widgets never keep a copy of the config. An editor calls :meth:`AppState.set_value` with
a dotted name; a valid edit replaces the config and emits ``config_changed`` with the names that
changed, so each page updates only what depends on them. An invalid edit is kept as *pending*
(the user's text stays in the field) and reported through ``problems_changed`` by dotted name;
Start refuses to run while anything is pending (:meth:`validate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from lora_studio.core.config import RunConfig
from lora_studio.core.data.files import DEMOS
from lora_studio.core.errors import ConfigError
from lora_studio.core.train import SharedModel

#: Run states shown in the status bar (``idle`` before the first run of a session).
RUN_STATES = ("idle", "starting", "running", "paused", "stopping", "completed", "cancelled", "failed")


class AppState(QObject):
    config_changed = Signal(object, object)  # (RunConfig, frozenset of changed dotted names)
    problems_changed = Signal(object)  # dict: dotted name -> reason
    model_info_changed = Signal(object)  # ModelInfo, or None while unknown / on error
    model_error = Signal(object)  # LoraStudioError (or other exception) from reading model info
    device_changed = Signal(object)  # DeviceSummary
    estimate_changed = Signal(object)  # MemoryEstimate.to_dict(), or None
    run_state_changed = Signal(str, str)  # (state, detail)
    theme_changed = Signal(object)  # Theme
    chat_model_changed = Signal(str)  # what the Chat page has loaded ("" when nothing)

    def __init__(self, config: RunConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._config = config or RunConfig()
        self._pending: dict[str, Any] = {}
        self._problems: dict[str, str] = {}
        self.model_info: Any = None
        self.model_failure: Exception | None = None
        self.device: Any = None
        self.estimate: dict[str, Any] | None = None
        self.chat_model = ""  # what the Chat page has loaded, in words (the status bar shows it)
        self.run_state = "idle"
        self.run_detail = ""
        self.theme: Any = None
        #: What a page may use while a run is paused (the engine lends its model here).
        self.shared_model = SharedModel()
        #: dotted name -> (page title, label): lets messages name a field the way the user sees it.
        self.field_labels: dict[str, tuple[str, str]] = {}

    # -- the config ---------------------------------------------------------------------------

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    @property
    def pending(self) -> dict[str, Any]:
        return dict(self._pending)

    def value(self, dotted: str) -> Any:
        """The value a field should display: the user's pending text if invalid, else the config's."""
        if dotted in self._pending:
            return self._pending[dotted]
        section, _, name = dotted.partition(".")
        return getattr(getattr(self._config, section), name)

    def set_value(self, dotted: str, value: Any) -> bool:
        return self.set_values({dotted: value})

    def set_values(self, values: dict[str, Any]) -> bool:
        """Apply edits together (e.g. quantization and double quant); False if any is invalid.

        Valid edits are applied even when another pending edit is still invalid, so one bad field
        never freezes the rest of the form.
        """
        pending = {**self._pending, **values}
        good = dict(pending)
        new_config: RunConfig | None = None
        problems: dict[str, str] = {}
        while good:
            try:
                new_config = self._config.with_overrides(good)
                break
            except ConfigError as exc:
                problems.update(exc.problems)
                bad = {k for k in good if any(p == k or p.startswith(k + ".") for p in exc.problems)}
                if not bad:  # a cross-field problem not named after an edit: blame the new edits
                    bad = set(values) & set(good)
                    for key in bad:
                        problems.setdefault(key, "; ".join(exc.problems.values()))
                    if not bad:
                        break
                for key in bad:
                    del good[key]
        for key in good:
            pending.pop(key, None)
        self._pending = pending
        self._set_problems({k: v for k, v in problems.items() if _belongs(k, pending)})
        if new_config is not None and good:
            self._apply(new_config)
        return not pending

    def replace(self, config: RunConfig) -> None:
        """Load a whole config (a run's, or the last-used one): pending edits are dropped."""
        self._pending = {}
        self._set_problems({})
        self._apply(config)

    def _apply(self, config: RunConfig) -> None:
        old = self._config.to_dict()
        new = config.to_dict()
        changed = frozenset(
            f"{section}.{name}"
            for section, fields in new.items()
            if isinstance(fields, dict)
            for name, value in fields.items()
            if old.get(section, {}).get(name) != value
        )
        self._config = config
        if changed:
            self.config_changed.emit(config, changed)

    def set_problems(self, problems: dict[str, str]) -> None:
        """Show problems found outside the form (Start's checks against the model or the files)."""
        self._set_problems({**{k: v for k, v in self._problems.items() if k in self._pending}, **problems})

    def _set_problems(self, problems: dict[str, str]) -> None:
        if problems != self._problems:
            self._problems = problems
            self.problems_changed.emit(dict(problems))

    def validate(self) -> dict[str, str]:
        """Everything Start checks before any work begins; dotted name -> reason ({} when fine).

        The config itself is always valid (pending edits are the invalid ones); on top of it the
        model's context length and the data file's existence are checked, because a user should
        learn of those at once, not after a model load.
        """
        problems = {k: self._problems.get(k, "is not valid") for k in self._pending}
        config = self._config
        if self.model_failure is not None:
            problems["model.source"] = getattr(self.model_failure, "message", str(self.model_failure))
        elif self.model_info is not None:
            try:
                config.check_against_model(self.model_info.context_length)
            except ConfigError as exc:
                problems.update(exc.problems)
        for dotted in ("data.path", "data.eval_path"):
            path = self.value(dotted)
            if path and path not in DEMOS and not Path(path).expanduser().exists():
                problems[dotted] = f"{path} does not exist"
        self.set_problems(problems)
        return problems

    def describe(self, dotted: str) -> str:
        """'Train › Learning rate' for a field shown in the form, else the dotted name."""
        page, label = self.field_labels.get(dotted, ("", ""))
        return f"{page} › {label}" if label else dotted

    # -- other shared facts -------------------------------------------------------------------

    def set_model_info(self, info: Any) -> None:
        self.model_info, self.model_failure = info, None
        self.model_info_changed.emit(info)

    def set_model_failure(self, error: Exception) -> None:
        self.model_info, self.model_failure = None, error
        self.model_info_changed.emit(None)
        self.model_error.emit(error)

    def set_device(self, device: Any) -> None:
        self.device = device
        self.device_changed.emit(device)

    def set_chat_model(self, description: str) -> None:
        if description != self.chat_model:
            self.chat_model = description
            self.chat_model_changed.emit(description)

    def set_estimate(self, estimate: dict[str, Any] | None) -> None:
        self.estimate = estimate
        self.estimate_changed.emit(estimate)

    def set_run_state(self, state: str, detail: str = "") -> None:
        assert state in RUN_STATES, state
        self.run_state, self.run_detail = state, detail
        self.run_state_changed.emit(state, detail)

    @property
    def running(self) -> bool:
        return self.run_state in ("starting", "running", "paused", "stopping")

    def set_theme(self, theme: Any) -> None:
        self.theme = theme
        self.theme_changed.emit(theme)


def _belongs(problem: str, pending: dict[str, Any]) -> bool:
    return any(problem == k or problem.startswith(k + ".") for k in pending)
