#!/bin/bash

# Parameters
#SBATCH --array=0-13%14
#SBATCH --cpus-per-task=8
#SBATCH --error=/RUN_DIR/launch/SUBMISSION/%A_%a_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=scaling-paper-7b-12gb
#SBATCH --mem=64G
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/RUN_DIR/launch/SUBMISSION/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=1253
#SBATCH --wckey=submitit

# setup
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /RUN_DIR/launch/SUBMISSION/%A_%a_%t_log.out --error /RUN_DIR/launch/SUBMISSION/%A_%a_%t_log.err /venv/bin/python -u -m submitit.core._submit /RUN_DIR/launch/SUBMISSION
