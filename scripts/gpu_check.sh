#!/bin/bash
# One prepared GPU session (prints numbers; never part of the tests): the CUDA tests, each paper recipe's
# throughput, memory and loss finiteness under bf16 / fp16 / fp32 (scripts/bench_recipe.py), and one paper
# run end to end (train, resume, evaluate). Writes $OUT/log.txt, $OUT/bench.jsonl and $OUT/eval.json.
#
#   OUT=/tmp/out bash scripts/gpu_check.sh                                   # on a CUDA machine, from the repo
#   DEV=cpu STEPS=1 E2E=2 SET="--set data.size=64 --set fit.batch_size=2" bash scripts/gpu_check.sh   # CPU smoke
#
# A machine without kornia gets it from wheels in .whl/ (pip download kornia kornia_rs for its Python).
cd "$(dirname "$0")/.."
python3 -c "import kornia" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PARTLAB_PROGRESS=0 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/log.txt
DEV=${DEV:-cuda}; STEPS=${STEPS:-10}; E2E=${E2E:-200}; SET=${SET:-}
PL="python3 -m partlab.cli"
echo "== $(date -u +%T) env" | tee -a $L
{ nvidia-smi -L; python3 -c "import torch,torchvision,kornia;print('torch',torch.__version__,'torchvision',torchvision.__version__,'kornia',kornia.__version__,'cuda',torch.cuda.is_available() and torch.cuda.get_device_name())"; nproc; } 2>&1 | tee -a $L
echo "== $(date -u +%T) tests" | tee -a $L
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/test_precision.py tests/test_train.py 2>&1 | tail -n 25 | tee -a $L
echo "== $(date -u +%T) bench" | tee -a $L
bench() {
  for run in "$@"; do
  set -- $run; cl=--channels-last; [ $2 = off ] && cl=
  timeout 50 python3 scripts/bench_recipe.py $1 --amp $2 $cl --workers $3 --steps $STEPS --warmup 3 --data-batches 3 --device $DEV $SET --json $OUT/bench.jsonl 2>&1 | grep -v "^partlab.features" | tee -a $L
  done
}
bench "scops bf16 8" "scops fp16 8" "contrastive bf16 8" "contrastive fp16 8" "motion bf16 8" "motion fp16 8" "maskcontrast bf16 8" "maskcontrast fp16 8"
echo "== $(date -u +%T) paper run: train, resume, evaluate" | tee -a $L
R=/tmp/runs/scops_paper
timeout 100 $PL train scops --recipe paper --allow-random-init --amp bf16 --steps $E2E --device $DEV --out $R \
  --set fit.num_workers=8 --set fit.channels_last=true --set fit.checkpoint_every=100 --set fit.log_every=50 $SET 2>&1 | grep -v "^partlab.features" | tee -a $L
timeout 60 $PL train scops --recipe paper --allow-random-init --amp bf16 --steps $((E2E + 100)) --device $DEV --out $R --resume \
  --set fit.num_workers=8 --set fit.channels_last=true --set fit.checkpoint_every=100 --set fit.log_every=50 $SET 2>&1 | grep -v "^partlab.features" | tee -a $L
python3 -c "import torch,json;c=torch.load('$R/last.pt',map_location='cpu',weights_only=False);print(json.dumps(c.get('history', c.get('model_history', []))[-3:]))" 2>&1 | tail -n 3 | tee -a $L
timeout 90 $PL evaluate --run $R --baseline kmeans --baseline-mask rbd --n-test 100 --device $DEV --json $OUT/eval.json 2>&1 | grep -v "^partlab.features" | tee -a $L
echo "== $(date -u +%T) fp32 and no workers" | tee -a $L
bench "scops off 8" "scops bf16 0" "maskcontrast off 8" "motion off 8"
echo "== $(date -u +%T) done" | tee -a $L
