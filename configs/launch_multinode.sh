#!/usr/bin/env bash
# Launch `nmt <fit|validate|test> ...` on this node of a multi-node job. Run it once on every node
# with the same arguments; only NODE_RANK differs. The script appends the job's shape
# (--trainer.num_nodes, --trainer.devices) to the arguments, so the YAML config and the launch
# always agree. Works for the DDP and the DeepSpeed strategies alike.
#
# Environment (defaults in brackets):
#   LAUNCHER        torchrun | srun | env                                      [torchrun]
#   NNODES          number of nodes                                            [1, or SLURM_NNODES]
#   NODE_RANK       this node's index, 0 .. NNODES-1 (not used with srun)      [0]
#   NPROC_PER_NODE  processes per node, one per GPU                            [GPUs seen, else 1]
#   MASTER_ADDR     address of node 0, reachable from every node               [127.0.0.1]
#   MASTER_PORT     a free TCP port on node 0                                  [29500]
#   PYTHON          the interpreter of the environment HyperNMT is installed in [python]
#
# Launchers:
#   torchrun  one torchrun agent per node starts NPROC_PER_NODE workers; Lightning reads the
#             torchelastic environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
#               node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 configs/launch_multinode.sh \
#                          fit --config configs/wmt14_en_fr_gnmt.yaml
#               node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 configs/launch_multinode.sh \
#                          fit --config configs/wmt14_en_fr_gnmt.yaml
#   srun      inside a SLURM allocation (sbatch/salloc); srun starts one task per GPU on every
#             node and Lightning reads SLURM_* itself. Run the script once, from the batch script:
#               #SBATCH --nodes=4 --ntasks-per-node=8 --gpus-per-node=8
#               LAUNCHER=srun NPROC_PER_NODE=8 configs/launch_multinode.sh fit --config ...
#   env       plain environment variables: Lightning itself starts NPROC_PER_NODE processes on
#             this node and joins the others through MASTER_ADDR/MASTER_PORT/NODE_RANK (it sets
#             WORLD_SIZE = NNODES * NPROC_PER_NODE for them). Same usage as torchrun.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: [NNODES=N NODE_RANK=i MASTER_ADDR=host ...] $0 fit --config CONFIG.yaml [overrides]" >&2
    exit 2
fi

PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-torchrun}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
    NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

shape=(--trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE")

case "$LAUNCHER" in
    torchrun)
        exec "$PYTHON" -m torch.distributed.run \
            --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC_PER_NODE" \
            --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
            -m nmt.cli "$@" "${shape[@]}"
        ;;
    srun)
        exec srun --nodes="$NNODES" --ntasks-per-node="$NPROC_PER_NODE" \
            "$PYTHON" -m nmt.cli "$@" "${shape[@]}"
        ;;
    env)
        # LOCAL_RANK would tell Lightning that the processes were created for it.
        unset LOCAL_RANK RANK WORLD_SIZE
        export NODE_RANK MASTER_ADDR MASTER_PORT
        exec "$PYTHON" -m nmt.cli "$@" "${shape[@]}"
        ;;
    *)
        echo "$0: LAUNCHER must be torchrun, srun or env, not '$LAUNCHER'" >&2
        exit 2
        ;;
esac
