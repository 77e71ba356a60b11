#!/usr/bin/env bash
# Start this host's share of a multi-host `recsys train` job; run it on every host.
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=host0:29400 deploy/train-multihost.sh \
#       --model dlrm --data /shared/data --out /shared/runs/x --config configs/dlrm.yaml
set -euo pipefail
: "${NNODES:?set NNODES, the number of hosts}"
: "${NPROC_PER_NODE:?set NPROC_PER_NODE, processes (GPUs) per host}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT, host:port of the rendezvous (e.g. the first host)}"
RDZV_ID="${RDZV_ID:-recsys-$(date +%Y%m%d)}"
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
    -m recsys train "$@"
