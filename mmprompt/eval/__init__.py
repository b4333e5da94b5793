"""Decoding, metrics and evaluation of a model on a task split."""
