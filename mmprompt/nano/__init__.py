"""The embedded nano checkpoints: pretraining, vision warm-up, perception probes, model cards."""
