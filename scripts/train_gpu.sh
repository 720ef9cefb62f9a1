#!/usr/bin/env bash
# Trains the shipped tiny checkpoint on a lent GPU machine in one call: tokenizer, then decoder.
# Usage: OUT=/path TOK_MIN=3.2 DEC_MIN=4 scripts/train_gpu.sh CORPUS_DIR
# Runs with the machine's own python3 (torch + OpenCV; PyAV absent -> the loader reads clip.wav sidecars).
# Results come back in $OUT: the checkpoint split into <16 MiB parts (cat model.part.* > model.safetensors)
# and logs.tgz (metrics, summaries, loss plots, configs).
set -euo pipefail
data=${1:?corpus folder}
out=${OUT:?set OUT}
py=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
t0=$(date +%s)
"$py" -m eartalking.cli train-tokenizer --data "$data" --out runs/tokenizer --minutes "${TOK_MIN:-3.2}" \
  --steps "${TOK_STEPS:-6000}" --batch "${TOK_BATCH:-64}" --eval-every 500 --device "${DEVICE:-auto}"
split -b 15M runs/tokenizer/tokenizer.safetensors "$out/tokenizer.part."
echo "tokenizer done in $(( $(date +%s) - t0 )) s"
"$py" -m eartalking.cli train --data "$data" --tokenizer runs/tokenizer --out runs/decoder --minutes "${DEC_MIN:-4}" \
  --steps "${DEC_STEPS:-8000}" --batch "${DEC_BATCH:-32}" --eval-every 500 --device "${DEVICE:-auto}"
rm -f "$out"/tokenizer.part.*
split -b 15M runs/decoder/model.safetensors "$out/model.part."
tar czf "$out/logs.tgz" runs/tokenizer/{metrics.jsonl,summary.json,loss.png,config.json} \
  runs/decoder/{metrics.jsonl,summary.json,loss.png,config.json,aux_head.safetensors}
echo "all done in $(( $(date +%s) - t0 )) s"; ls -la "$out"
