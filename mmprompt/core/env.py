"""The environment variables mmprompt reads, in one place."""

#: Where generated synthetic data lives (default: ``data/synthetic`` of the source checkout).
DATA_DIR = "MMPROMPT_DATA_DIR"
#: Where the shipped checkpoints live (default: ``data/checkpoints`` of the source checkout).
CHECKPOINTS_DIR = "MMPROMPT_CHECKPOINTS"
#: Set by the notebook runner for each notebook run: a tuning run given no ``out_dir`` keeps its checkpoints
#: in a subdirectory named for its settings, so a killed notebook run continues its tuning runs when it is
#: run again (:func:`mmprompt.experiment.tune.resolve_settings`).
TUNING_WORK_DIR = "MMPROMPT_TUNING_WORK_DIR"
#: Set to "1" by the notebook runner: progress bars are plain text, whose final frame a saved notebook keeps
#: (:mod:`mmprompt.core.progress`).
TEXT_PROGRESS = "MMPROMPT_TEXT_PROGRESS"
