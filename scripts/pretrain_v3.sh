#!/usr/bin/env bash
# Resumable v3 pretraining of the three nano checkpoints (see data/README.md, "Staged pretraining").
# Rerun the same command to continue: finished stages (data/pretrain-stages/<preset>/) are skipped and an
# interrupted stage resumes from its loop checkpoint (runs/pretrain-v3/<preset>/). Commit
# data/pretrain-stages/ whenever a stage lands, so a fresh clone continues from there.
#
#   nohup scripts/pretrain_v3.sh > runs/pretrain-v3.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
"$PY" -m mmprompt.staged_pretrain --preset ofa-nano --steps 8000 --resnet-steps 1000 --threads 1
"$PY" -m mmprompt.staged_pretrain --preset ofa-nano-large --steps 4000 --resnet-steps 1000 --threads 1
"$PY" -m mmprompt.staged_pretrain --preset ofa-nano-small --steps 8000 --resnet-steps 1000 --threads 1
