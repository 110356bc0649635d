"""Light and dark themes: one palette, one style sheet, one set of series colours for every page.

Series keep the same colour in both themes and on every page (the loss is always blue, the eval
loss orange...), so a user who learnt the Train page can read any other plot at a glance. The
colours are mid-saturation so they stay legible on a white and on a near-black background.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

#: Plot series and memory components, by key; the same in both themes.
SERIES = {
    "loss": "#3b82f6",
    "loss_smooth": "#1d4ed8",
    "eval_loss": "#f97316",
    "learning_rate": "#10b981",
    "grad_norm": "#a855f7",
    "tokens_per_s": "#06b6d4",
    "mem_allocated": "#ef4444",
    "mem_reserved": "#f59e0b",
    "mem_peak": "#ec4899",
    "mem_rss": "#ef4444",
    "mem_estimate": "#8b95a5",
    "histogram": "#3b82f6",
    "max_seq_len": "#f97316",
    # preference tuning: chosen vs rejected are the Okabe–Ito bluish green and vermillion, told apart
    # also with the common colour-vision deficiencies
    "reward_chosen": "#009e73",
    "reward_rejected": "#d55e00",
    "reward_margin": "#6366f1",
    "reward_accuracy": "#d946ef",
    "kl": "#eab308",
}

#: Memory-estimate components, in the order the bar stacks them.
#: Memory components and their colours: the Okabe–Ito palette, told apart also with the common
#: colour-vision deficiencies (neighbours differ in hue *and* lightness; the two greys in lightness).
COMPONENTS = {
    "weights_quantized": ("Quantized weights", "#0072b2"),
    "weights_unquantized": ("Other weights", "#56b4e9"),
    "lora_weights": ("LoRA weights", "#009e73"),
    "gradients": ("Gradients", "#d55e00"),
    "optimizer": ("Optimizer state", "#f0e442"),
    "activations": ("Activations", "#e69f00"),
    "logits": ("Logits and loss", "#cc79a7"),
    "temporaries": ("Backward temporaries", "#6b6b6b"),
    "overhead": ("Framework overhead", "#b0b0b0"),
}


@dataclass(frozen=True)
class Theme:
    name: str  # "light" | "dark"
    window: str
    card: str
    base: str
    border: str
    text: str
    muted: str
    accent: str
    accent_text: str
    nav: str
    nav_selected: str
    error: str
    ok: str
    warn: str
    trained_bg: str
    masked_text: str
    plot_bg: str
    plot_fg: str

    @property
    def dark(self) -> bool:
        return self.name == "dark"


LIGHT = Theme(
    name="light",
    window="#f4f5f7",
    card="#ffffff",
    base="#ffffff",
    border="#dfe3e8",
    text="#1f2328",
    muted="#5f6b7a",
    accent="#2563eb",
    accent_text="#ffffff",
    nav="#e9ecf0",
    nav_selected="#d6e2ff",
    error="#c62828",
    ok="#1b7f3b",
    warn="#b45309",
    trained_bg="#c7f0d2",
    masked_text="#8a94a3",
    plot_bg="#ffffff",
    plot_fg="#3d4652",
)

DARK = Theme(
    name="dark",
    window="#15171c",
    card="#1d2027",
    base="#252932",
    border="#333845",
    text="#e6e8eb",
    muted="#9aa4b2",
    accent="#5b8def",
    accent_text="#ffffff",
    nav="#101216",
    nav_selected="#24324f",
    error="#ff6b6b",
    ok="#4ade80",
    warn="#fbbf24",
    trained_bg="#1f4d2e",
    masked_text="#6b7483",
    plot_bg="#1d2027",
    plot_fg="#c3cad4",
)

MODES = ("system", "light", "dark")


def system_prefers_dark() -> bool:
    from PySide6.QtCore import Qt

    hints = QGuiApplication.styleHints()
    return hints is not None and hints.colorScheme() == Qt.ColorScheme.Dark


def resolve(mode: str) -> Theme:
    """``system`` follows the desktop's colour scheme (light when the platform does not say)."""
    if mode == "dark" or (mode == "system" and system_prefers_dark()):
        return DARK
    return LIGHT


def apply(app: QApplication, theme: Theme) -> None:
    """Fusion style + a full palette + a small style sheet: identical look on every platform."""
    app.setStyle("Fusion")
    app.setPalette(palette(theme))
    app.setStyleSheet(style_sheet(theme))


def palette(t: Theme) -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: t.window,
        QPalette.ColorRole.WindowText: t.text,
        QPalette.ColorRole.Base: t.base,
        QPalette.ColorRole.AlternateBase: t.card,
        QPalette.ColorRole.ToolTipBase: t.card,
        QPalette.ColorRole.ToolTipText: t.text,
        QPalette.ColorRole.PlaceholderText: t.muted,
        QPalette.ColorRole.Text: t.text,
        QPalette.ColorRole.Button: t.card,
        QPalette.ColorRole.ButtonText: t.text,
        QPalette.ColorRole.BrightText: t.error,
        QPalette.ColorRole.Highlight: t.accent,
        QPalette.ColorRole.HighlightedText: t.accent_text,
        QPalette.ColorRole.Link: t.accent,
        QPalette.ColorRole.Mid: t.border,
        QPalette.ColorRole.Midlight: t.border,
        QPalette.ColorRole.Light: t.card,
        QPalette.ColorRole.Dark: t.border,
    }
    for role, colour in roles.items():
        p.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(t.masked_text))
    return p


def style_sheet(t: Theme) -> str:
    return f"""
    QWidget {{ font-size: 10pt; }}
    QToolTip {{ color: {t.text}; background: {t.card}; border: 1px solid {t.border}; padding: 4px; }}
    QFrame#navRail {{ background: {t.nav}; border: none; border-right: 1px solid {t.border}; }}
    QToolButton#navButton {{
        color: {t.muted}; background: transparent; border: none; border-radius: 8px;
        padding: 6px 2px; font-size: 9pt;
    }}
    QToolButton#navButton:hover {{ background: {t.border}; color: {t.text}; }}
    QToolButton#navButton:checked {{ background: {t.nav_selected}; color: {t.text}; font-weight: 600; }}
    QLabel#pageTitle {{ font-size: 17pt; font-weight: 600; color: {t.text}; }}
    QLabel#pageSummary {{ color: {t.muted}; font-size: 10pt; }}
    QFrame#card {{ background: {t.card}; border: 1px solid {t.border}; border-radius: 8px; }}
    QLabel#cardTitle {{ font-weight: 600; font-size: 10.5pt; color: {t.text}; }}
    QLabel#muted, QLabel#unit {{ color: {t.muted}; }}
    QLabel#fieldError {{ color: {t.error}; font-size: 9pt; }}
    QLabel#factValue {{ color: {t.text}; font-weight: 600; }}
    QLabel#verdictOk {{ color: {t.ok}; font-weight: 600; font-size: 11pt; }}
    QLabel#verdictBad {{ color: {t.error}; font-weight: 600; font-size: 11pt; }}
    QLabel#verdictNeutral {{ color: {t.muted}; font-weight: 600; font-size: 11pt; }}
    QLabel#bigNumber {{ font-size: 14pt; font-weight: 600; color: {t.text}; }}
    QWidget[invalid="true"] {{ border: 1px solid {t.error}; border-radius: 4px; }}
    QPushButton {{
        background: {t.base}; border: 1px solid {t.border}; border-radius: 6px; padding: 5px 14px;
    }}
    QPushButton:hover {{ border-color: {t.accent}; }}
    QPushButton:disabled {{ color: {t.masked_text}; }}
    QPushButton#primary {{
        background: {t.accent}; color: {t.accent_text}; border: 1px solid {t.accent}; font-weight: 600;
        padding: 6px 20px;
    }}
    QPushButton#primary:disabled {{ background: {t.border}; border-color: {t.border}; color: {t.muted}; }}
    QToolButton#foldButton {{ border: none; color: {t.accent}; font-weight: 600; padding: 2px 0; }}
    QFrame#messageBar {{ border-radius: 6px; border: 1px solid {t.border}; background: {t.card}; }}
    QFrame#messageBar[kind="error"] {{ border-color: {t.error}; }}
    QFrame#messageBar[kind="warning"] {{ border-color: {t.warn}; }}
    QLabel#messageTitle[kind="error"] {{ color: {t.error}; font-weight: 600; }}
    QLabel#messageTitle[kind="warning"] {{ color: {t.warn}; font-weight: 600; }}
    QLabel#messageTitle[kind="info"] {{ color: {t.accent}; font-weight: 600; }}
    QProgressBar {{
        border: 1px solid {t.border}; border-radius: 5px; background: {t.base}; text-align: center;
        min-height: 18px; color: {t.text};
    }}
    QProgressBar::chunk {{ background: {t.accent}; border-radius: 4px; }}
    QStatusBar {{ background: {t.nav}; color: {t.muted}; border-top: 1px solid {t.border}; }}
    QStatusBar QLabel {{ color: {t.muted}; padding: 0 8px; }}
    QScrollArea {{ background: transparent; border: none; }}
    QScrollArea > QWidget > QWidget {{ background: transparent; }}
    QTabWidget::pane {{ border: 1px solid {t.border}; border-radius: 6px; background: {t.card}; }}
    QTabBar::tab {{ padding: 5px 14px; color: {t.muted}; border: none; }}
    QTabBar::tab:selected {{ color: {t.text}; border-bottom: 2px solid {t.accent}; }}
    QSplitter::handle {{ background: transparent; }}
    QListWidget, QPlainTextEdit, QTextBrowser {{
        border: 1px solid {t.border}; border-radius: 6px; background: {t.base};
    }}
    """
