"""What the notebooks call: the notebook API, papermill runs and reports, the paper's numbers, plots, widgets."""
