#!/usr/bin/env bash
# The checks that need a GPU, in one script (benchmarks/RESULTS.md quotes their output):
#   4. R50 with a 256-channel FPN, trained briefly at 800 px (for realistic detections per image), then
#      kdeval predict against the plain batch-1 fp32 loop on 640×480 JPEGs resized to 800/1333 (batch 8;
#      900 files: the 300 val images three times, so that start-up weighs as on COCO; with and without
#      the postprocessing overlapping the next batch's network, and with CUDA graphs of backbone, FPN and head),
#      with a profile of the fastest way (predict_profile.txt: where a batch's time goes), and the
#      postprocessing alone, torchvision's against kdeval's (postprocess_cost.json), and one whole
#      model call phase by phase: operations and synchronisations, fp32 and fp16 (inference_host_cost*.json);
#   T. the tests' CUDA cases (tests that take the `device` fixture, and tests/test_predict_on_gpu.py):
#      batched postprocessing, transform and anchors on CUDA against torchvision's, the feature losses
#      under CUDA's bf16 autocast, predict on CUDA (workers, pinned copies, fp16, nvJPEG) against the CPU,
#      CUDA graphs against the eager network and predict with them against without;
#   F. fp16's AP on CUDA without the whole study: the Shapes R18 baseline trained on the GPU (3 epochs),
#      AP under fp32, bf16 and fp16 (amp_ap.py) and images/s fp32 against AMP (predict_throughput.py);
#   1. the default `kdeval study` on the GPU, timed (issue 7's "a small fraction" of the CPU's time);
#   2. fp32 against AMP: AP and images/s of the study's three Shapes models on all 300 val images,
#      and AP under bf16 and fp16 with either postprocessing (amp_ap.py);
#   3. torchrun with the NCCL backend: `predict` under torchrun gives the single process's detections;
#   5. the R50 throughput again at batch 16.
# Every step has its own time limit and what it made is kept, so a rerun continues where one stopped.
# All steps take longer than one 10-minute device call: STEPS picks some, in this order (default all):
# r50 (4, at most 6 min), mixed (4d, needs r50's model, at most 2.5 min), host (4c, at most 2 min), tests (T, at most 2 min), postprocess (4b, about 1 min),
# fp16 (F, about 2 min), study (1), amp (2, 2b; needs the study), torchrun (3), r50b16 (5).
# A lent machine has had 15 minutes of device time in all, start-up included. On the H100 (2026-11-28)
# these two calls fitted, the second made at once while the machine was still warm (the study cut):
#   STEPS=r50 bash gpu_check.sh R; STEPS=fp16 bash gpu_check.sh R; STEPS='tests host postprocess' bash gpu_check.sh R
#        (328 s with 300 R50 images; give it about 7 min with the 900 of R50_COPIES=3)
#   STEPS=study bash gpu_check.sh R; STEPS=torchrun bash gpu_check.sh R; STEPS=amp bash gpu_check.sh R   (430 s)
# wrapped in `timeout`, their results tarred into $OUT (a call brings back at most 8 files).
# What to run first next time (the overlap, CUDA graphs and batching by shape were built without a
# GPU, 2026-11-28): the 3x question and the new code's CUDA tests in one call (steps run in this
# file's order; about 7 min, each step under its own limit, so wrap it in `timeout 560`),
#   STEPS='r50 mixed tests' bash benchmarks/gpu_check.sh R
# then, if the machine is still warm: STEPS='host postprocess' bash benchmarks/gpu_check.sh R, or the study.
#
#   bash benchmarks/gpu_check.sh [OUT]      # OUT: folder for the log and result files (default reports/gpu)
#
# Where kdeval's dependencies are missing (a lent machine with PyTorch alone), wheels in .whl/ are
# installed into /tmp/site first (pytest and pytorch-msssim among them, for step tests).
set -u
OUT=${1:-${OUT:-reports/gpu}}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/kdeval-gpu}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 KDEVAL_CACHE=$WORK/cache
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
step() { echo; echo "=== $1 ($(date +%T))"; }
want() { [[ " ${STEPS:-all} " == *" all "* || " ${STEPS:-all} " == *" $1 "* ]]; }
clock() { local start=$SECONDS; "$@"; local rc=$?; echo "--- wall $((SECONDS - start)) s, exit $rc"; return $rc; }
r50_throughput() {  # batch size [profiled batches]: COCO-sized JPEGs resized as RetinaNet does, Shapes' 300 val images × 3 files each
    timeout 240 python3 benchmarks/predict_throughput.py "$WORK/r50/model.pt" --resize-to 640x480 --input-size 800 \
        --max-input-size 1333 --max-images 300 --copies "${R50_COPIES:-3}" --batch-size "$1" --profile "${2:-0}" --out "$WORK/b$1/r50.json"
    cp "$WORK/b$1/r50.json" "$OUT/r50_b$1.json" 2>/dev/null
    cp "$WORK/b$1/predict_profile.txt" "$OUT/r50_b$1_profile.txt" 2>/dev/null
}

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(), os.cpu_count(), 'CPUs')"
# the libraries the corruptions and the scoring need (a lent machine may lack some or have other versions)
python3 - <<'EOF'
import importlib.metadata as metadata
for name in ("numpy", "numba", "scipy", "scikit-image", "opencv-python-headless", "opencv-python", "imagecorruptions-imaug", "pycocotools", "pytest"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING")
EOF

step "0. Shapes generated into the cache"
clock python3 -c "from kdeval.data.source import shapes_split; shapes_split('train'); shapes_split('val')"

if want r50; then
    step "4. R50, 256-channel FPN, trained briefly at 800 px"
    clock timeout "${R50_LIMIT:-120}" python3 -m kdeval train --arch r50 --epochs "${R50_EPOCHS:-1}" --image-size 800 \
        --fpn-channels 256 --head-norm none --batch-size 16 --workers 8 --device cuda --out "$WORK/r50" --resume --no-progress
    if [ -f "$WORK/r50/model.pt" ]; then
        r50_throughput 8 6
    fi
fi
if want mixed && [ -f "$WORK/r50/model.pt" ]; then
    step "4d. R50 on COCO-like mixed sizes and orientations: batched by shape against the dataset's order (and batch 1)"
    timeout 150 python3 benchmarks/batching_order.py "$WORK/r50/model.pt" --input-size 800 --max-input-size 1333 \
        --max-images 300 --workers 8 --out "$OUT/batching_order.json"
fi
if want host; then
    step "4c. one model call, phase by phase: torchvision's inference against kdeval's (R50 at 800 px, batch 8)"
    timeout 60 python3 benchmarks/inference_host_cost.py --device cuda --out "$OUT/inference_host_cost.json"
    timeout 60 python3 benchmarks/inference_host_cost.py --device cuda --amp --out "$OUT/inference_host_cost_fp16.json"
fi
if want tests; then
    step "T. the tests' CUDA cases"
    # (and, at a few seconds' cost, the compiled corruption steps and COCO stats against this machine's
    # scipy, scikit-image and pycocotools, which may not be the pinned versions)
    # a test file whose imports fail here (numba, say) is reported, and the others still run
    clock timeout 120 python3 -m pytest -p no:cacheprovider -q --tb=short --continue-on-collection-errors tests/test_postprocess.py tests/test_losses.py \
        tests/test_predict_on_gpu.py tests/test_cuda_graphs.py tests/test_compiled_library_parts.py tests/test_coco_ap.py > "$OUT/cuda_tests.txt" 2>&1
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/cuda_tests.txt" | tail -30
fi
if want postprocess; then
    step "4b. postprocessing alone: torchvision's against kdeval's (R50 at 800 px, 80 classes, batch 8)"
    timeout 90 python3 benchmarks/postprocess_cost.py --device cuda --out "$OUT/postprocess_cost.json"
fi
if want fp16; then
    step "F. fp16's AP on CUDA: the Shapes R18 baseline, trained on the GPU (3 epochs)"
    clock timeout 120 python3 -m kdeval train --epochs 3 --device cuda --out "$WORK/baseline" --resume --no-progress
    if [ -f "$WORK/baseline/model.pt" ]; then
        for dtype in float16 bfloat16; do
            timeout 60 python3 benchmarks/amp_ap.py "$WORK/baseline/model.pt" --device cuda --dtype $dtype --out "$OUT/amp_ap_baseline_$dtype.json"
        done
        timeout 60 python3 benchmarks/predict_throughput.py "$WORK/baseline/model.pt" --max-images 300 --batch-size 32 \
            --out "$OUT/amp_baseline.json"
    fi
fi
if want study; then
    step "1. kdeval study (default settings) on the GPU"
    clock timeout "${STUDY_LIMIT:-240}" python3 -m kdeval study --out "$WORK/study" --device cuda --no-progress
    cp "$WORK/study/evaluate/ap_table.md" "$OUT/study_ap_table.md" 2>/dev/null
    cp "$WORK/study/robustness/robustness_summary.md" "$OUT/study_robustness.md" 2>/dev/null
fi
if want amp; then
    step "2. fp32 against AMP on Shapes val (300 images, 128 px)"
    for model in "$WORK"/study/models/*/model.pt; do
        name=$(basename "$(dirname "$model")")
        timeout 90 python3 benchmarks/predict_throughput.py "$model" --max-images 300 --batch-size 32 \
            --out "$WORK/amp_$name.json" && cp "$WORK/amp_$name.json" "$OUT/"
    done

    step "2b. AMP's AP on CUDA: bf16 and fp16, each with torchvision's and kdeval's postprocessing"
    for dtype in bfloat16 float16; do
        timeout 120 python3 benchmarks/amp_ap.py "$WORK"/study/models/*/model.pt --device cuda --dtype $dtype --out "$OUT/amp_ap_$dtype.json"
    done
fi
if want torchrun; then
    step "3. torchrun, NCCL: predict under torchrun against one process"
    model=$(ls "$WORK"/study/models/*/model.pt | head -1)
    timeout 60 python3 -m kdeval predict "$model" -o "$WORK/one.json" --device cuda --no-cache --no-progress
    timeout 90 torchrun --standalone --nproc-per-node 1 -m kdeval predict "$model" -o "$WORK/ranks.json" --device cuda --no-cache --no-progress
    python3 - "$WORK/one.json" "$WORK/ranks.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"single process {len(a)} detections, torchrun (nccl) {len(b)}: {'identical' if a == b else 'DIFFERENT'}")
EOF
fi
if want r50b16 && [ -f "$WORK/r50/model.pt" ]; then
    step "5. R50 throughput at batch 16"
    r50_throughput 16
fi
echo; echo "=== done ($(date +%T))"
