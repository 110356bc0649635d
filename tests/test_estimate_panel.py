"""The memory panel edits the exact memory savers through the app state, and its breakdown and
advice follow them (an 8B catalog model on a 12 GB card, estimated without weights)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from gui_helpers import memory_panel, settle_panel

from lora_studio.core.config import RunConfig
from lora_studio.gui.widgets.memory_panel import CHECKPOINTING

LLAMA = "catalog:Llama-3.1-8B"


def standard_config() -> RunConfig:
    """What a transformers + peft script does: peft's fp32 preparation, the full loss, no checkpointing."""
    return RunConfig().with_overrides(
        {
            "model.quantization": "nf4",
            "model.double_quant": True,
            "model.lean_kbit_prep": False,
            "training.chunked_loss": False,
            "data.max_seq_len": 4096,
            "training.batch_size": 1,
        }
    )


settle = settle_panel


def entry(checkpointing: bool, offload: str | None) -> int:
    """The checkpointing combo's index for (gradient_checkpointing, checkpoint_offload)."""
    return next(i for i, (_text, on, o) in enumerate(CHECKPOINTING) if (on, o) == (checkpointing, offload))


@pytest.fixture
def panel(qtbot):
    with memory_panel(qtbot, standard_config()) as widget:
        yield widget


def test_savers_that_are_off_show_as_off_and_the_advice_names_each_with_its_saving(panel):
    assert not panel.lean.widget.isChecked() and panel.lean.widget.isEnabled()
    assert not panel.chunked.widget.isChecked()
    assert panel.checkpointing.currentText() == CHECKPOINTING[0][0]
    assert "Does not fit" in panel.bar.verdict.text()
    advice = panel.bar.advice.text()
    for saver in (
        "Keep embeddings and lm_head in bf16",
        "Compute the loss in chunks",
        "Turn on gradient checkpointing",
        "Turn on offloaded gradient checkpointing",
    ):
        assert saver in advice and "saves" in advice.split(saver, 1)[1].split("</div>")[0], saver


def test_the_device_line_on_the_bar_says_whose_memory_it_is(panel):
    """An unlabelled black line stood at ~96% of the bar (#24)."""
    assert panel.bar.bar.device_label == "RTX 3060 · 12.0 GB"
    assert "RTX 3060" in panel.bar.bar.toolTip()


def test_choosing_savers_in_the_panel_changes_the_config_and_the_breakdown(qtbot, panel):
    state = panel.state
    before = panel.bar.estimate
    always = entry(True, "on")  # layer inputs always in CPU memory
    panel.checkpointing.setCurrentIndex(always)
    panel.checkpointing.activated.emit(always)
    assert state.config.training.gradient_checkpointing and state.config.training.checkpoint_offload == "on"
    offloaded = settle(qtbot, panel, before)
    assert offloaded["bytes"]["activations"] < before["bytes"]["activations"] / 10
    assert "offloaded" in offloaded["explanations"]["activations"]

    panel.chunked.widget.setChecked(True)
    assert state.config.training.chunked_loss
    chunked = settle(qtbot, panel, offloaded)
    assert chunked["bytes"]["logits"] < offloaded["bytes"]["logits"] / 8
    assert "chunked loss" in chunked["explanations"]["logits"]

    panel.lean.widget.setChecked(True)
    lean = settle(qtbot, panel, chunked)
    assert lean["bytes"]["weights_unquantized"] < chunked["bytes"]["weights_unquantized"] * 0.6
    assert lean["fits"] and "Fits" in panel.bar.verdict.text()


def test_the_panel_follows_savers_changed_elsewhere(qtbot, panel):
    panel.state.set_values({"training.gradient_checkpointing": True, "training.checkpoint_offload": "off"})
    assert panel.checkpointing.currentText() == CHECKPOINTING[entry(True, "off")][0]
    panel.state.set_value("training.checkpoint_offload", True)  # an older config's switch: "on"
    assert panel.checkpointing.currentText() == CHECKPOINTING[entry(True, "on")][0]
    panel.state.set_values({"model.quantization": "none", "model.double_quant": False})
    assert not panel.lean.widget.isEnabled()  # lean preparation only concerns quantized models
    panel.state.set_value("training.chunked_loss", True)
    assert panel.chunked.widget.isChecked()
