#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice: the same `lineage train` on every host.
# UNTESTED HERE (no TPU in this project's CI); edit the names, then run it from your workstation.
# `--coordinator auto`: JAX detects the slice (process count, ids, coordinator) from the TPU metadata.
#
# Chips per host (one process per host sees them all) and a mesh to start from; check the
# accelerator type names against Google's current docs before use:
#   type            hosts × chips/host   mesh
#   v5litepod-16    4 × 4                mesh.data=4 mesh.fsdp=-1 parallel.zero_stage=3   (v5e)
#   v5p-32          4 × 4                mesh.data=4 mesh.fsdp=-1 parallel.zero_stage=3   (v5p counts TensorCores: 2 per chip)
#   v6e-16          4 × 4                mesh.data=4 mesh.fsdp=-1 parallel.zero_stage=3
# mesh.tensor (and mesh.expert) must stay within one host's chips: lineage refuses a group across hosts.
set -euo pipefail
TPU=${TPU:-my-tpu}; ZONE=${ZONE:-us-central2-b}; PROJECT=${PROJECT:-my-project}
TYPE=${TYPE:-v5litepod-16}; RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
REPO=${REPO:-https://github.com/YOU/lineage_jax.git}
# Every host must see the run directory, and its lock files need a filesystem with locks: an NFS share
# (e.g. a Filestore instance, NFS=10.0.0.2:/share) mounted at the same path on every host. lineage refuses
# a URL such as gs://bucket/run: a run directory is a mounted path.
NFS=${NFS:-10.0.0.2:/share}; RUN_DIR=${RUN_DIR:-/mnt/runs/tiny-mh}

if [[ "${CREATE:-0}" == 1 ]]; then   # queued resource: waits until the slice is granted
  gcloud compute tpus queued-resources create "$TPU-qr" --node-id "$TPU" --project "$PROJECT" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME"
fi
gcloud compute tpus tpu-vm ssh "$TPU" --project "$PROJECT" --zone "$ZONE" --worker=all --command="
  set -e
  mountpoint -q /mnt/runs || { sudo mkdir -p /mnt/runs && sudo mount -t nfs $NFS /mnt/runs; }
  [ -d lineage_jax ] || git clone $REPO lineage_jax
  cd lineage_jax && python3 -m pip install -q -e . 'jax[tpu]'
  lineage train --coordinator auto --no-sample --no-progress \
    mesh.data=4 mesh.fsdp=-1 parallel.zero_stage=3 parallel.precision=bf16 run_dir=$RUN_DIR
"
