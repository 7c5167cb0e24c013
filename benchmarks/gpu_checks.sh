#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the GPU-marked tests (the training loops in Ray Train as two parts of
# their own, gpu_train_a and gpu_train_b), then a DPO training step's time
# and memory at Stable Diffusion 1.5's and SDXL's real sizes (random weights: no hub needed), a ReFL
# step on SD 1.5 with a ViT-L-14 CLIP-score reward, a full SDXL fine-tune's memory (fp32, bf16 with its bf16
# reference, and Adafactor), then a reward-model step on open_clip ViT-L-14. Each part has its own time limit and writes its own log
# to the folder $1, so one failing or slow part does not cost the others. PARTS (space-separated
# names) runs only those parts, in this file's order; on a machine lent for 10-minute calls, run gpu_train_a and
# gpu_train_b each in a call of its own. Exits 1, naming them, when a part failed or ran out of time.
#   bash benchmarks/gpu_checks.sh /tmp/gpu-checks
#   PARTS="sd15_build refl_sd15" bash benchmarks/gpu_checks.sh /tmp/gpu-checks
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
models=${MODELS_DIR:-/tmp/raypref-full-size}

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, log to $out/NAME.txt
  local name=$1 secs=$2
  shift 2
  if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then return; fi
  echo "== $name ($(date +%T))"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  tail -n 12 "$out/$name.txt"
  if [ "$rc" -ne 0 ]; then failed="$failed $name"; fi
}
failed=""

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
$py -c "import torch, diffusers, transformers, peft, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'open_clip', open_clip.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

part gpu_tests 150 $py -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_scorers_clip_family.py tests/test_train_refl.py
# each training loop in Ray Train on the GPU (needs Ray), in two halves of about 4.5 minutes each on one H200 (more
# than the other parts together), so that each fits a 10-minute call of its own
part gpu_train_a 420 $py -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_gpu_train.py -k "dpo or reward"
part gpu_train_b 420 $py -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_gpu_train.py -k "sft or pcclip"
part sd15_build 90 $py benchmarks/full_size_pipelines.py sd15 "$models/sd15" --device cuda
part sd15_dpo 180 $py benchmarks/train_step_memory.py --model "$models/sd15" --pairs 8 --steps 3
part refl_sd15 150 $py benchmarks/train_step_memory.py --loop refl --model "$models/sd15" --pairs 4 --steps 3 \
  --scorer ViT-L-14 --settings "fp32;bf16;bf16 + checkpointing"
part sdxl_build 120 $py benchmarks/full_size_pipelines.py sdxl "$models/sdxl" --device cuda
part sdxl_dpo 240 $py benchmarks/train_step_memory.py --model "$models/sdxl" --pairs 2 --steps 3 \
  --settings "fp32;bf16;bf16 + checkpointing;fp32, full fine-tune"
part sdxl_full 300 $py benchmarks/train_step_memory.py --model "$models/sdxl" --pairs 2 --steps 3 \
  --settings "fp32, full fine-tune;bf16, full fine-tune;bf16, full fine-tune, Adafactor"
part reward_vitl 100 $py benchmarks/train_step_memory.py --loop reward --model ViT-L-14 --pairs 32 --steps 3 \
  --settings "fp32;bf16;bf16 + checkpointing"
# the script's own status: a failed or timed-out part must not read as a clean run
if [ -n "$failed" ]; then echo "failed:$failed (logs in $out)"; exit 1; fi
