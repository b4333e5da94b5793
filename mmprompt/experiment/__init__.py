"""Backbones, profiles and the one `tune` call the notebooks use; the tuning CLI; efficiency measurements."""
