#!/usr/bin/env bash
# One prepared check for a lent GPU machine (H100/H200; see /work/shared/DESIGN.md,
# "GPU machine logistics"). Run from the repository root ON the device machine, in the
# last of the calls that carried the onnxruntime-gpu wheel in pieces:
#
#   here:   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#             --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d /tmp/ortgpu
#           sha256sum /tmp/ortgpu/*.whl          # -> ORT_GPU_SHA256 below
#           split -b 60M -d /tmp/ortgpu/*.whl /tmp/ortgpu/part.
#           mkdir .ortgpu0 .ortgpu1 ...; one piece in each; all git-ignored
#           (echo '/.ortgpu*/' >> .git/info/exclude)
#   device: one call per piece in quick succession (carry: [".ortgpu<k>"], command: true),
#           then the last one: carry its piece and run  bash scripts/gpu_check.sh
#
# What it does (about 5-8 minutes on an H100): joins the pieces, checks the sha256,
# installs the wheel with --no-deps --target (the machine's own onnxruntime has no CUDA
# provider), points the loader at the NVIDIA pip libraries, makes the training plugin's
# entry point visible without installing leukoedge, then: `leukoedge doctor`; trains a
# scratch (128 px) and a ResNet50 (224 px, random init) for one epoch on synthetic cells;
# exports both as fp32 and fp16; `parity` of each fp32 export on the CUDA provider;
# `bench` on CUDA (inference only at batches 1, 32, 256, including ResNet50 fp16 at batch
# 256; PyTorch eager on the same weights; end to end); `classify` of 2,000 files on CUDA.
# Everything goes to ONE file, $OUT/gpu_check.txt (plus the bench JSONs).
set -uo pipefail

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
: >"$LOG"
ORT_GPU_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
ORT_GPU_SHA256=${ORT_GPU_SHA256:-}   # fill in from the sha256sum above (or export it)
PY=${PY:-python3}
SITE=/tmp/ortgpu-site
WORK=/tmp/gpu_check
REPO=$(pwd)

log() { printf '\n=== %s\n' "$*" | tee -a "$LOG"; }
run() {  # run a command, log it, its output and its wall time; never stop the script
  log "\$ $*"
  local t0 t1 rc
  t0=$(date +%s%N)
  "$@" >>"$LOG" 2>&1
  rc=$?
  t1=$(date +%s%N)
  printf -- '--- rc=%s wall=%d ms\n' "$rc" "$(( (t1 - t0) / 1000000 ))" | tee -a "$LOG"
  return 0
}

log "machine"
{ date -u; uname -a; nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader; nproc; "$PY" --version; } >>"$LOG" 2>&1

# -- 1. the onnxruntime-gpu wheel ----------------------------------------------------------
log "install onnxruntime-gpu from the carried pieces"
mapfile -t PIECES < <(find . -maxdepth 2 -path './.ortgpu*/part.*' -type f \
  -printf '%f %p\n' | sort | cut -d' ' -f2-)
if [ "${#PIECES[@]}" -eq 0 ]; then
  echo "no wheel pieces (.ortgpu*/part.*) found: carry them first" | tee -a "$LOG"
  exit 1
fi
mkdir -p /tmp/ortgpu
cat "${PIECES[@]}" >"/tmp/ortgpu/$ORT_GPU_WHEEL"
got=$(sha256sum "/tmp/ortgpu/$ORT_GPU_WHEEL" | cut -d' ' -f1)
echo "pieces: ${#PIECES[@]}, sha256 $got" | tee -a "$LOG"
if [ -n "$ORT_GPU_SHA256" ] && [ "$got" != "$ORT_GPU_SHA256" ]; then
  echo "sha256 mismatch (expected $ORT_GPU_SHA256): a piece is missing or stale" | tee -a "$LOG"
  exit 1
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "/tmp/ortgpu/$ORT_GPU_WHEEL" >>"$LOG" 2>&1 || {
  echo "pip install failed" | tee -a "$LOG"; exit 1; }

# the CUDA 13 / cuDNN libraries come as NVIDIA pip packages: put their lib folders on the
# loader path (leukoedge dlopens the provider library to name what is missing)
NVLIBS=$("$PY" - <<'EOF'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for base in list(nvidia.__path__):
    for lib in glob.glob(os.path.join(base, "**", "lib"), recursive=True):
        if glob.glob(os.path.join(lib, "*.so*")):
            dirs.add(lib)
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="${NVLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# leukoedge is not installed there: its package and plugin come from this tree, and a
# small dist-info makes the `leukoedge.plugins` entry point (train/export/parity) visible
mkdir -p "$SITE/leukoedge-0.1.0.dist-info"
printf 'Metadata-Version: 2.1\nName: leukoedge\nVersion: 0.1.0\n' \
  >"$SITE/leukoedge-0.1.0.dist-info/METADATA"
printf '[leukoedge.plugins]\ntrain = leukoedge_train.plugin\n' \
  >"$SITE/leukoedge-0.1.0.dist-info/entry_points.txt"
export PYTHONPATH="$SITE:$REPO:$REPO/plugins${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LE=("$PY" -m leukoedge)

run "$PY" -c "import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())"
run "${LE[@]}" doctor

# -- 2. models -----------------------------------------------------------------------------
rm -rf "$WORK"; mkdir -p "$WORK"
cd "$WORK" || exit 1
run "${LE[@]}" synth data --patients 12 --cells-per-patient 20 --seed 0
run "${LE[@]}" synth real2000 --patients 40 --cells-per-patient 50 --seed 7
run "${LE[@]}" train scratch data --epochs 1 --out runs/scratch --device cuda
run "${LE[@]}" train resnet50 data --weights none --epochs 1 --input-size 224 \
  --batch-size 32 --out runs/resnet50 --device cuda
for arch in scratch resnet50; do
  run "${LE[@]}" export "runs/$arch" --out "m/$arch.onnx" --data data
  run "${LE[@]}" export "runs/$arch" --out "m/${arch}_fp16.onnx" --precision fp16 \
    --report-data data
  run "${LE[@]}" parity "m/$arch.onnx" "runs/$arch" --data data --provider cuda
  run "${LE[@]}" parity "m/$arch.onnx" "runs/$arch" --data data --provider cpu
done

# -- 3. speed on the GPU -------------------------------------------------------------------
run "${LE[@]}" bench m/resnet50_fp16.onnx --provider cuda --batch-sizes 1,32,256 \
  --versus m/resnet50.onnx --data data --files 2000 --seconds 5 --json "$OUT/bench_resnet50_fp16.json"
run "${LE[@]}" bench m/resnet50.onnx --provider cuda --batch-sizes 1,32,256 \
  --checkpoint runs/resnet50 --data data --files 2000 --seconds 5 --json "$OUT/bench_resnet50_fp32.json"
run "${LE[@]}" bench m/scratch.onnx --provider cuda --batch-sizes 1,32,256 \
  --checkpoint runs/scratch --data data --files 2000 --seconds 5 --json "$OUT/bench_scratch.json"
run "${LE[@]}" bench m/scratch_fp16.onnx --provider cuda --batch-sizes 32,256 \
  --versus m/scratch.onnx --data data --files 2000 --seconds 5 --json "$OUT/bench_scratch_fp16.json"
TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -v)
for m in scratch resnet50_fp16; do
  run "${TIME[@]}" "${LE[@]}" classify real2000 --model "m/$m.onnx" --provider cuda \
    --batch-size 256 --out "pred_$m.csv" --overwrite
done
run nvidia-smi

log "done"
cd "$REPO" || exit 0
