#!/usr/bin/env bash
# Build a BEIR SciFact index on an NVIDIA GPU (RECSEARCH_DEVICE=cuda) and on the CPU in the same
# run, and print the embedding throughput (items/s) of each.
#
#   bash bench/gpu_build.sh                  # .venv from scripts/setup.sh
#   VENV=/opt/venv NO_INSTALL=1 bash bench/gpu_build.sh
#
# Setup: batches run on onnxruntime's CUDA provider when onnxruntime-gpu is installed, else on
# torch when it sees CUDA. When neither does, onnxruntime-gpu (with its pip CUDA and cuDNN
# libraries) replaces onnxruntime in the venv: the two packages provide the same module and
# must not be installed together. NO_INSTALL=1 skips that step.
# Each device builds in its own data dir (a build reuses the vectors of the previous version,
# so a second build in the same dir would embed nothing). SciFact is read from
# ../shared/data/beir-scifact (SCIFACT=... to change). Results go to bench/results/gpu_build.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
SCIFACT="$(realpath "${SCIFACT:-../shared/data/beir-scifact}")"
OUT="${OUT:-bench/results/gpu_build.json}"

nvidia-smi -L || { echo "gpu_build: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }
[ -x "$PY" ] || bash scripts/setup.sh
[ -f "$SCIFACT/corpus.jsonl" ] || { echo "gpu_build: no SciFact at $SCIFACT" >&2; exit 1; }

cuda_backend() {  # which library reaches the GPU: ort, torch or none
    "$PY" - <<'PY'
import onnxruntime, torch
if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
    print("ort")
elif torch.cuda.is_available():
    print("torch")
else:
    print("none")
PY
}

backend="$(cuda_backend)"
if [ "$backend" != ort ] && [ -z "${NO_INSTALL:-}" ]; then
    echo "gpu_build: installing onnxruntime-gpu in place of onnxruntime"
    "$PY" -m pip uninstall -y onnxruntime
    "$PY" -m pip install "onnxruntime-gpu[cuda,cudnn]>=1.21"
    backend="$(cuda_backend)"
fi
if [ "$backend" = none ]; then
    echo "gpu_build: neither onnxruntime nor torch reaches the GPU" >&2
    exit 1
fi
echo "gpu_build: CUDA batches through $backend"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export RECSEARCH_INDEX_POLL_S=0
for device in cuda cpu; do
    export RECSEARCH_DATA_DIR="$WORK/$device" RECSEARCH_DEVICE="$device"
    "$PY" -m web.cli -q import beir "$SCIFACT" >/dev/null
    # First start exports the ONNX model (cached in the data dir) before the timed embedding.
    "$PY" -m web.cli -q build | tee "$WORK/$device.txt"
done

"$PY" - "$WORK" "$OUT" <<'PY'
import json, re, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for device in ("cuda", "cpu"):
    text = (work / f"{device}.txt").read_text()
    found = re.search(r"built in ([\d.]+)s \((\d+) embedded at (\d+) items/s", text)
    manifest = json.loads((work / device / "indexes" / "v000001" / "manifest.json").read_text())
    rows[device] = {
        "build_s": float(found.group(1)),
        "embedded": int(found.group(2)),
        "items_per_s": float(manifest["embedded"] / manifest["embed_seconds"]),
        "encoder": manifest["model"].get("encoder"),
    }
speedup = rows["cuda"]["items_per_s"] / rows["cpu"]["items_per_s"]
print(f"\n{'device':<6} {'encoder':<10} {'items':>6} {'items/s':>9} {'build s':>8}")
for device, row in rows.items():
    print(f"{device:<6} {row['encoder']:<10} {row['embedded']:>6} {row['items_per_s']:>9.1f} {row['build_s']:>8.1f}")
print(f"cuda / cpu: {speedup:.1f}x")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"scifact": rows, "cuda_over_cpu": round(speedup, 2)}, indent=1) + "\n")
print(f"wrote {out}")
PY
