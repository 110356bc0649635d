"""Dialogs opened from the Help menu: the System check and About / Settings."""
