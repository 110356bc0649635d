"""The memory panel's long-sequence savers: checkpointing with its "auto" | "on" | "off" offload,
the tiled MLP and norm recompute, and the line under the bar that says which of them the estimate
uses and why (an 8B catalog model on a 12 GB card, estimated without weights)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from gui_helpers import memory_panel, settle_panel

from lora_studio.core.config import RunConfig
from lora_studio.gui.widgets.forms import doc
from lora_studio.gui.widgets.memory_panel import (
    CHECKPOINTING,
    SAVER_CHOICES,
    Estimated,
    savers_line,
)

LLAMA = "catalog:Llama-3.1-8B"


def long_config(seq_len: int) -> RunConfig:
    """Llama-3.1-8B in NF4, r32, batch 1, checkpointing on; every saver left to "auto" (the defaults)."""
    return RunConfig().with_overrides(
        {
            "model.quantization": "nf4",
            "lora.r": 32,
            "training.batch_size": 1,
            "training.gradient_checkpointing": True,
            "data.max_seq_len": seq_len,
        }
    )


settle = settle_panel


@pytest.fixture
def panel(qtbot):
    with memory_panel(qtbot, long_config(20000)) as widget:
        yield widget


def choose(combo, index: int) -> None:
    """What a click on an entry does: select it and emit ``activated``."""
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def test_every_checkpointing_choice_round_trips_through_the_config(panel):
    training = lambda: panel.state.config.training  # noqa: E731
    for index, (text, on, offload) in enumerate(CHECKPOINTING):
        choose(panel.checkpointing, index)
        assert training().gradient_checkpointing is on, text
        if offload is not None:
            assert training().checkpoint_offload == offload, text
        assert not panel.state.pending and not panel.state.problems, text
        panel.checkpointing.setCurrentIndex((index + 1) % len(CHECKPOINTING))  # shown wrong on purpose
        panel._show_savers()
        assert panel.checkpointing.currentIndex() == index, text
    # ... and from the config to the combo, strings and an older config's switches alike
    for value, shown in (("auto", "auto"), ("off", "off"), ("on", "on"), (False, "off"), (True, "on")):
        panel.state.set_values(
            {"training.gradient_checkpointing": True, "training.checkpoint_offload": value}
        )
        assert training().checkpoint_offload == shown
        _text, on, offload = CHECKPOINTING[panel.checkpointing.currentIndex()]
        assert on and offload == shown, value
    panel.state.set_values({"training.gradient_checkpointing": False, "training.checkpoint_offload": "off"})
    assert panel.checkpointing.currentText() == "Off"


def test_turning_checkpointing_off_never_leaves_offload_on(panel):
    off = next(i for i, (_text, on, _o) in enumerate(CHECKPOINTING) if not on)
    for index, (text, on, offload) in enumerate(CHECKPOINTING):
        if not on:
            continue
        choose(panel.checkpointing, index)
        assert panel.state.config.training.checkpoint_offload == offload
        choose(panel.checkpointing, off)
        training = panel.state.config.training
        assert not training.gradient_checkpointing, text
        assert training.checkpoint_offload in ("auto", "off"), text
        assert training.checkpoint_offload == ("auto" if offload == "on" else offload), text
        assert not panel.state.pending and not panel.state.problems, text


def test_the_saver_controls_write_the_config_and_follow_it(qtbot, panel):
    state = panel.state
    for editor, dotted in (
        (panel.tiled_mlp, "training.tiled_mlp"),
        (panel.norm_recompute, "training.norm_recompute"),
    ):
        combo = editor.widget
        assert [combo.itemData(i) for i in range(combo.count())] == [v for v, _t in SAVER_CHOICES]
        assert combo.currentData() == "auto" and combo.toolTip() == doc(dotted) != ""
        for value, _text in SAVER_CHOICES:
            choose(combo, combo.findData(value))
            assert state.value(dotted) == value
        state.set_value(dotted, "on")  # edited elsewhere (a loaded config)
        assert combo.currentData() == "on"
        state.set_value(dotted, "auto")
    # the estimate follows them: forced on at a short sequence, the line says so
    before = settle(qtbot, panel)
    state.set_value("data.max_seq_len", 1024)
    short = settle(qtbot, panel, before)
    choose(panel.tiled_mlp.widget, panel.tiled_mlp.widget.findData("on"))
    settle(qtbot, panel, short)
    assert panel.savers.text() == "Long-sequence savers: tiled MLP — set to On."


def test_a_long_sequence_on_12_gb_fits_with_the_savers_auto_turns_on(qtbot, panel):
    estimate = panel.bar.estimate
    assert estimate["fits"] and panel.bar.verdict.text().startswith("✓ Fits on RTX 3060")
    line = panel.savers.text()
    assert panel.savers.isVisible()
    assert "tiled MLP" in line and "turned on by 'auto' because the run would not fit otherwise" in line
    assert "norm recompute" in line and "offloaded checkpoints" in line

    panel.state.set_value("data.max_seq_len", 1024)
    settle(qtbot, panel, estimate)
    assert panel.bar.verdict.text().startswith("✓ Fits")
    assert panel.savers.text() == "Long-sequence savers: none needed (auto)."

    # all three turned off: the same 20000 tokens no longer fit, and the line says none are used
    short = panel.bar.estimate
    panel.state.set_values(
        {
            "data.max_seq_len": 20000,
            "training.tiled_mlp": "off",
            "training.norm_recompute": "off",
            "training.checkpoint_offload": "off",
        }
    )
    settle(qtbot, panel, short)
    assert not panel.bar.estimate["fits"] and "Does not fit" in panel.bar.verdict.text()
    assert panel.savers.text() == "Long-sequence savers: none."


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            Estimated({}, ("norm recompute", "tiled MLP"), ("tiled MLP",), left_to_auto=True),
            "Long-sequence savers: norm recompute, tiled MLP — tiled MLP turned on by 'auto' because "
            "the run would not fit otherwise; norm recompute set to On.",
        ),
        (
            Estimated({}, left_to_auto=True, memory_known=False),
            "Long-sequence savers: none yet ('auto' decides once the memory to compare with is known).",
        ),
    ],
)
def test_the_savers_line_for_mixed_settings_and_unknown_memory(result, expected):
    assert savers_line(result) == expected
