#!/usr/bin/env bash
# Text-trainer recipes on a GPU machine (the `device` tool's H200): trains each recipe with `vitrine train text
# --device cuda` and compares base and tuned with `vitrine eval models` (dense retrieval over the whole catalog,
# the test queries, and the general caption check). Prepared so one device call runs it all; the working copy
# carries the data and the base model under .gpu/ (see the README, "Tuning the text embedder").
#   usage: bench/gpu_text_recipes.sh OUT_DIR
set -euo pipefail
out=${1:?OUT_DIR}
mkdir -p "$out" .gpu/runs
V="python3 -m vitrine.cli.main"
D=.gpu/data
zcat $D/catalog.jsonl.gz > .gpu/runs/scifact.jsonl
zcat $D/fashion.jsonl.gz > .gpu/runs/fashion.jsonl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
flat=.gpu/runs/flat.toml; printf '[index]\nfactory = "Flat"\n' > $flat
sci() {  # scifact recipes, one after another
  $V index --catalog .gpu/runs/scifact.jsonl --out .gpu/runs/sci-bundle --text-model .gpu/minilm --config $flat --force --quiet
  local names=.gpu/minilm
  while read -r tag args; do
    s=$SECONDS; $V train text --catalog .gpu/runs/scifact.jsonl --out .gpu/runs/sci-$tag \
      --base .gpu/minilm --bundle .gpu/runs/sci-bundle --queries $D/queries.jsonl --qrels $D/qrels/train.tsv \
      --general $D/captions.txt --device cuda --no-mlflow --quiet $args > "$out/sci-$tag.json" 2> "$out/sci-$tag.log" || true
    echo "sci-$tag $((SECONDS - s)) s" >> "$out/times.txt"
    names="$names,.gpu/runs/sci-$tag"
  done <<'R'
default
p2000 --max-pairs 2000
p2000lr5 --max-pairs 2000 --lr 5e-5
p2000lr5e2 --max-pairs 2000 --lr 5e-5 --epochs 2
judged --generators none --lr 5e-5 --epochs 2
R
  $V eval models --catalog .gpu/runs/scifact.jsonl --queries $D/queries.jsonl --qrels $D/qrels/test.tsv --candidates $names \
    --general $D/captions.txt --device cuda > "$out/sci-eval.txt" 2> "$out/sci-eval.log"
}
fas() {  # fashion recipes (no judgments: pairs from the catalog only)
  $V index --catalog .gpu/runs/fashion.jsonl --out .gpu/runs/fas-bundle --text-model .gpu/minilm --config $flat --force --quiet
  local names=.gpu/minilm
  while read -r tag args; do
    s=$SECONDS; $V train text --catalog .gpu/runs/fashion.jsonl --out .gpu/runs/fas-$tag \
      --base .gpu/minilm --bundle .gpu/runs/fas-bundle --general $D/captions.txt --device cuda --no-mlflow --quiet $args \
      > "$out/fas-$tag.json" 2> "$out/fas-$tag.log" || true
    echo "fas-$tag $((SECONDS - s)) s" >> "$out/times.txt"
    names="$names,.gpu/runs/fas-$tag"
  done <<'R'
default
p2000lr5 --max-pairs 2000 --lr 5e-5
lr5 --lr 5e-5
lora --adapter lora
R
  for task in text-paraphrase text-literal; do
    $V eval models --catalog .gpu/runs/fashion.jsonl --queries $D/fq/$task.jsonl --qrels $D/fq/$task.tsv --candidates $names \
      --general $D/captions.txt --device cuda > "$out/fas-eval-$task.txt" 2> "$out/fas-eval-$task.log"
  done
}
sci & fas & wait
cat "$out/times.txt" "$out"/*eval*.txt
