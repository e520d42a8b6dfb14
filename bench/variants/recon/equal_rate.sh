#!/bin/bash
# Issue 21, item 4's first target: hier_ae's level 0 against the fixed-chunk autoencoder peer at equal
# code rate and budget, on each corpus of ../shared/data (bench/experiments.md, "X-series").
#
#   bash bench/variants/recon/equal_rate.sh OUT [corpus ...]     # default: tinyshakespeare code multilingual
#   HIER_AE_SET="model.levels.0.min_segment_len=2" SKIP_PEER=1 bash bench/variants/recon/equal_rate.sh OUT code
#       # a variant: extra --set overrides for hier_ae (space-separated), and hier_ae only
#
# Per corpus: (1) hier_ae, `tiny-ae-offsets.yaml` + 25% line rows, entropy 300 + autoencoder 3,300 steps
# (about 4 minutes at 1 thread on an idle core), trained on the corpus' train.txt cut into documents;
# (2) bench.recon on the corpus' val.txt (256 held-out lines, 16 1 KB docs); (3) the peer trained for
# 4 minutes at the FSQ rate that gives hier_ae's code bits/byte on those lines (the peer pads a line's
# last chunk: its line rate is about 1.035 x its nominal rate); (4) the peer scored on the same 256 lines.
# One job at a time, 1 torch thread each. Run from the repository root.
set -euo pipefail
OUT=${1:?usage: equal_rate.sh OUT [corpus ...]}
shift
CORPORA=${*:-tinyshakespeare code multilingual}
DATA=${HIER_AE_DATA:-../shared/data}
PY=${PYTHON:-python}
EXTRA=()
for kv in ${HIER_AE_SET:-}; do EXTRA+=(--set "$kv"); done
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
STAGES='training.stages=[{kind: entropy, level: 0, steps: 300, lr: 3.0e-3}, {kind: autoencoder, level: 0, steps: 3300, lr: 2.0e-3}]'
mkdir -p "$OUT"
for corpus in $CORPORA; do
  d="$OUT/$corpus"
  mkdir -p "$d"
  # documents for examples/train.py (it holds some out for validation; one file would give none):
  # Tiny Shakespeare at blank lines, code at its `# ---- path ----` file headers, others 20 lines each
  $PY -c 'import sys; from pathlib import Path; from bench.rate_distortion import write_documents
write_documents(Path(sys.argv[1]), Path(sys.argv[2]))' "$DATA/$corpus/train.txt" "$d/train.jsonl"
  accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --num_cpu_threads_per_process 1 examples/train.py --config bench/variants/recon/tiny-ae-offsets.yaml \
    --output-dir "$d/hier_ae" --report-to none --data "$d/train.jsonl" --set data.p_line=0.25 --set "$STAGES" "${EXTRA[@]}" \
    > "$d/hier_ae.log" 2>&1
  $PY -m bench.recon --model "$d/hier_ae/model" --text "$DATA/$corpus/val.txt" --lines 256 --docs 16 \
    --out "$d/hier_ae_recon.json" --markdown "$d/hier_ae_recon.md" > "$d/hier_ae_recon.log" 2>&1
  if [ -n "${SKIP_PEER:-}" ]; then echo "$corpus: hier_ae -> $d/hier_ae_recon.md"; continue; fi
  rate=$($PY -c "import json, sys; from bench.rate_distortion import line_level, peer_rate
print(peer_rate(line_level(json.load(open(sys.argv[1])))['code_bits_per_byte']))" "$d/hier_ae_recon.json")
  $PY -m bench.ae_peer train --data "$corpus" --rate "$rate" --minutes 4 --p-line-start 0.25 --out "$d/peer" \
    > "$d/peer.log" 2>&1
  $PY -m bench.ae_peer score --model "$d/peer" --text "$DATA/$corpus/val.txt" --lines 256 --windows 200 \
    --out "$d/peer/score.json" >> "$d/peer.log" 2>&1
  echo "$corpus: hier_ae -> $d/hier_ae_recon.md, peer at nominal $rate bits/byte -> $d/peer/score.json"
done
