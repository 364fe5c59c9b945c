#!/usr/bin/env bash
# Everything that needs a GPU, in one run: denoising time, memory and bf16-vs-fp32 agreement
# (gpu_check.py), training throughput (training_throughput.py), then a training run of
# configs/mri-stage5.yaml sized to TRAIN_SECONDS of steps at the measured rate, exported to fp16, and
# the 512x512x400 CT of large_ct_memory.py through `medidiff denoise`.
#
# Usage: DATA=DIR OUT=DIR [TRAIN_SECONDS=180] [INIT=FILE] bash benchmarks/gpu_session.sh
# Training starts from INIT: by default runs/mri-stage4.safetensors (see configs/mri-stage5.yaml for
# where it comes from), which made stage 5; INIT=medidiff/weights/mr.safetensors trains on from the
# shipped model instead.
# DATA holds colin27_ch2_T1_brain_1mm.nii.gz, seg3d_T1_head.nii.gz and rorden_clinical_T2_1mm.nii.gz
# (copies of ../shared/data/reference). Results land in OUT: gpu.json, throughput.json, train.log,
# metrics.jsonl, mr-stage5.safetensors, large_ct.txt; the rest goes to stdout. Each part runs under its
# own time limit; a failed part does not stop the next.
set -uo pipefail
DATA=$(cd "${DATA:?set DATA to the folder of scans}" && pwd) || exit 2
mkdir -p "${OUT:?set OUT to a results folder}" && OUT=$(cd "$OUT" && pwd) || exit 2
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
INIT=${INIT:-runs/mri-stage4.safetensors}
if [ ! -f "$INIT" ]; then
    echo "$INIT is missing (configs/mri-stage5.yaml says how to get runs/mri-stage4.safetensors)" >&2
    exit 2
fi
INIT=$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")
stamp() { echo "[$(date +%T)] $*"; }

stamp "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"

stamp "denoising: bf16 and fp32, flips 1 and 8"
timeout 180 python3 benchmarks/gpu_check.py --scan "$DATA/colin27_ch2_T1_brain_1mm.nii.gz" \
    --output "$OUT/gpu.json" 2>&1
stamp "gpu_check exit $?"

train_set="data.train=[$DATA/seg3d_T1_head.nii.gz, $DATA/rorden_clinical_T2_1mm.nii.gz]"
val_set="data.val=$DATA/colin27_ch2_T1_brain_1mm.nii.gz"
stamp "training throughput (targets not cleaned: the step time does not depend on them)"
timeout 120 python3 benchmarks/training_throughput.py configs/mri-stage5.yaml --steps 60 \
    --set "$train_set" --set "$val_set" --set data.target_cleanup=none > "$OUT/throughput.json"
status=$?
stamp "throughput exit $status"; cat "$OUT/throughput.json"
workers=()
if [ "$status" -ne 0 ]; then  # e.g. too little shared memory for loader workers: load in the main process
    workers=(--set data.num_workers=0)
    timeout 120 python3 benchmarks/training_throughput.py configs/mri-stage5.yaml --steps 30 "${workers[@]}" \
        --set "$train_set" --set "$val_set" --set data.target_cleanup=none > "$OUT/throughput.json"
    stamp "throughput without loader workers: exit $?"; cat "$OUT/throughput.json"
fi

rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['steps_per_s'])" "$OUT/throughput.json" 2>/dev/null || echo 5)
steps=$(python3 -c "import sys; print(max(100, int(float(sys.argv[1]) * float(sys.argv[2]) * 0.9)))" "$rate" "$TRAIN_SECONDS")
stamp "training configs/mri-stage5.yaml for $steps steps ($rate steps/s measured)"
rm -rf runs/mri-stage5
timeout --signal=INT --kill-after=30 $((TRAIN_SECONDS + 150)) python3 -m medidiff train --config configs/mri-stage5.yaml \
    --progress log --set "$train_set" --set "$val_set" --set "train.max_steps=$steps" --set "train.init_weights=$INIT" "${workers[@]}" > "$OUT/train.log" 2>&1
stamp "train exit $?"; tail -n 8 "$OUT/train.log"
cp runs/mri-stage5/metrics.jsonl "$OUT/" 2>/dev/null
python3 -m medidiff export runs/mri-stage5 -o "$OUT/mr-stage5.safetensors" --force
stamp "export exit $?"

stamp "a 512x512x400 CT with medidiff denoise, default settings"
timeout 150 python3 benchmarks/large_ct_memory.py > "$OUT/large_ct.txt"
stamp "large CT exit $?"; cat "$OUT/large_ct.txt"
