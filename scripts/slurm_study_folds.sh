#!/bin/bash
# One study fold per SLURM array task, then a collect job. Submit from the repository root:
#   jobid=$(sbatch --parsable --array=1-5 scripts/slurm_study_folds.sh)
#   sbatch --dependency=afterok:$jobid --wrap ".venv/bin/python study.py --preset=cpu --collect=True"
#SBATCH --job-name=study-fold
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=08:00:00
#SBATCH --output=logs/study-fold-%a.log
set -euo pipefail
.venv/bin/python study.py --preset=cpu --fold="${SLURM_ARRAY_TASK_ID}" "$@"
