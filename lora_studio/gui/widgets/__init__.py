"""Reusable widgets: cards and form rows bound to the app state, live plots, the memory bar, the log
view and the message bar that presents every error."""
