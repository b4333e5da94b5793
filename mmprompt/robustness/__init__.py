"""FGSM attacks (attack.py) and their task-level sweeps (sweep.py)."""
