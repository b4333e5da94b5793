#!/usr/bin/env bash
# Reproduce the paper's tables and figures on a CUDA machine: papermill runs of the notebooks with the
# gpu profile (python -m mmprompt.runs), written under papermill_runs/gpu/; notebook 10 then compares them
# with the paper number by number.
#
# usage: MODEL_DIR=/ckpt DATA_DIR=/data/ofa scripts/reproduce_paper.sh [--dry-run] [--only SECTIONS]
#                                                                     [--out DIR] [-- RUNNER OPTIONS...]
#
#   MODEL_DIR  holds the OFA-Sys checkpoints (HF format: config.json, weights, vocab.json + merges.txt) as
#              $MODEL_DIR/ofa-base and $MODEL_DIR/ofa-large (the directory names give the size to notebook 10)
#   DATA_DIR   the datasets in OFA's TSV layout: <task>_<split>.tsv for refcoco (RefCOCO), snli_ve, caption
#              and vqa (+ trainval_ans2label.json); optionally $DATA_DIR/refcocoplus and $DATA_DIR/refcocog,
#              each with refcoco_<split>.tsv, for the RefCOCO+ and RefCOCOg columns (skipped when absent).
#              Split names are mmprompt's (mmprompt.experiment.profiles.SPLITS): refcoco val/testA/testB (RefCOCOg:
#              val-u as val, test-u as testA and testB), snli_ve dev/test, caption val/test (Karpathy),
#              vqa val/test (test-dev/test-std are scored by the EvalAI server, not here)
#   PYTHON     the interpreter (default: python)
#
#   --dry-run      print the commands, run nothing (MODEL_DIR and DATA_DIR must still be set)
#   --only LIST    comma-separated sections (default: all but efficiency):
#                    table1      FT vs PT, base and large, every task            (notebook 02)
#                    table2      BitFit / Adapter / LoRA / shallow / PT, large   (notebook 08)
#                    table3      prefixes in the encoder / decoder / both, large (notebook 04)
#                    table4      plain vs MLP reparameterisation, large          (notebook 05)
#                    length      prompt lengths 10 16 32 64 100 120, large       (notebook 03)
#                    fgsm        FGSM robustness of PT vs FT, large (Figure 3)   (notebook 06)
#                    efficiency  step time, memory, convergence, base and large  (notebook 07; opt-in)
#   --out DIR      root of the run directories (default: papermill_runs/gpu)
#   -- ...         passed to every `python -m mmprompt.runs` call (e.g. --force, --execution-timeout 86400)
#
# Runs that already finished (metrics.json, status ok) are skipped by the runner, so the script can be
# re-run after an interruption. The training recipe per task (lr, batch, epochs, resolution, beam, EMA)
# is the gpu profile's (mmprompt.experiment.profiles.GPU_TASK_DEFAULTS); launch a run under torchrun for data
# parallelism. Exit status: 0 all ok, 1 some run failed, 2 bad usage or environment.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "reproduce_paper.sh: $*" >&2; exit 2; }

ALL_SECTIONS="table1 table2 table3 table4 length fgsm efficiency"
DEFAULT_SECTIONS="table1 table2 table3 table4 length fgsm"
DRY_RUN=0
SECTIONS="$DEFAULT_SECTIONS"
OUT="papermill_runs/gpu"
PASS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a comma-separated list of: $ALL_SECTIONS"
                SECTIONS="${2//,/ }"; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PASS=("$@"); break ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
for s in $SECTIONS; do
    [[ " $ALL_SECTIONS " == *" $s "* ]] || die "--only: unknown section '$s'; allowed: $ALL_SECTIONS"
done
[[ -n "$SECTIONS" ]] || die "--only: empty list; allowed: $ALL_SECTIONS"

[[ -n "${MODEL_DIR:-}" ]] || die "MODEL_DIR is not set: point it at the directory holding the OFA-Sys checkpoints ofa-base/ and ofa-large/ (e.g. MODEL_DIR=/ckpt DATA_DIR=/data/ofa $0)"
[[ -n "${DATA_DIR:-}" ]] || die "DATA_DIR is not set: point it at the datasets in OFA's TSV layout (<task>_<split>.tsv), e.g. MODEL_DIR=/ckpt DATA_DIR=/data/ofa $0"
MODEL_DIR="${MODEL_DIR%/}"
DATA_DIR="${DATA_DIR%/}"
PYTHON="${PYTHON:-python}"
TASKS=(refcoco snli_ve caption vqa)

needs_large=0; needs_base=0
for s in $SECTIONS; do
    case "$s" in table1|efficiency) needs_base=1; needs_large=1 ;; *) needs_large=1 ;; esac
done
if [[ $DRY_RUN -eq 0 ]]; then
    [[ -d "$MODEL_DIR" ]] || die "MODEL_DIR=$MODEL_DIR is not a directory"
    [[ -d "$DATA_DIR" ]] || die "DATA_DIR=$DATA_DIR is not a directory"
    [[ $needs_base -eq 0 || -f "$MODEL_DIR/ofa-base/config.json" ]] || die "no OFA-base checkpoint: $MODEL_DIR/ofa-base/config.json is missing"
    [[ $needs_large -eq 0 || -f "$MODEL_DIR/ofa-large/config.json" ]] || die "no OFA-large checkpoint: $MODEL_DIR/ofa-large/config.json is missing"
    for t in "${TASKS[@]}"; do
        [[ -f "$DATA_DIR/${t}_train.tsv" ]] || die "DATA_DIR=$DATA_DIR has no ${t}_train.tsv (expected OFA's TSV layout <task>_<split>.tsv)"
    done
fi

# RefCOCO+ / RefCOCOg: the refcoco task on other data directories, when present
REF_EXTRA=()
for d in refcocoplus refcocog; do
    if [[ -d "$DATA_DIR/$d" ]]; then REF_EXTRA+=("$DATA_DIR/$d")
    else echo "note: $DATA_DIR/$d not found: its RefCOCO column is skipped" >&2; fi
done

COMMANDS=()
# add NOTEBOOK SIZE DATA PARAMS...: one `python -m mmprompt.runs sweep` command
add() {
    local nb="$1" size="$2" data="$3"; shift 3
    local cmd
    cmd=$(printf '%q ' "$PYTHON" -m mmprompt.runs sweep "notebooks/$nb.ipynb" --profile gpu \
          -p model_dir "$MODEL_DIR/ofa-$size" -p data_dir "$data" "$@" --out "$OUT" ${PASS[@]+"${PASS[@]}"})
    COMMANDS+=("${cmd% }")
}
add_tasks() {  # NOTEBOOK SIZE PARAMS...: every task on DATA_DIR, then RefCOCO+ / RefCOCOg
    local nb="$1" size="$2"; shift 2
    add "$nb" "$size" "$DATA_DIR" -p task "${TASKS[@]}" "$@"
    local d
    for d in ${REF_EXTRA[@]+"${REF_EXTRA[@]}"}; do add "$nb" "$size" "$d" -p task refcoco "$@"; done
}

for s in $SECTIONS; do
    case "$s" in
        table1) add_tasks 02_tasks base; add_tasks 02_tasks large ;;
        table2) add_tasks 08_lightweight_methods large -p length 64 ;;
        table3) add_tasks 04_prompt_depth large -p length 64 ;;
        table4) add_tasks 05_reparameterization large -p length 64 ;;
        length) add_tasks 03_prompt_length large -p length 10 16 32 64 100 120 ;;
        fgsm) add "06_robustness" large "$DATA_DIR" -p task "${TASKS[@]}" -p space embeds ;;
        efficiency) add "07_efficiency" base "$DATA_DIR" -p task refcoco
                    add "07_efficiency" large "$DATA_DIR" -p task refcoco ;;
    esac
done

echo "# ${#COMMANDS[@]} command(s), sections: $SECTIONS; runs under $OUT" >&2
if [[ $DRY_RUN -eq 1 ]]; then
    printf '%s\n' "${COMMANDS[@]}"
    exit 0
fi

failed=0
for cmd in "${COMMANDS[@]}"; do
    echo "+ $cmd" >&2
    eval "$cmd" || { echo "reproduce_paper.sh: FAILED (status $?): $cmd" >&2; failed=$((failed + 1)); }
done
if [[ $failed -gt 0 ]]; then
    echo "reproduce_paper.sh: $failed of ${#COMMANDS[@]} command(s) had failed runs; see the _failed/ directories under $OUT/<notebook>/" >&2
    exit 1
fi
echo "reproduce_paper.sh: all ${#COMMANDS[@]} command(s) ok; notebooks/10_paper_reproduction.ipynb compares them with the paper (it reads <runs_root>/gpu)" >&2
