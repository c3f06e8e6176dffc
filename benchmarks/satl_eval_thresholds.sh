#!/bin/sh
# CF1/OF1 of the satl sweep runs at the 0.5 threshold vs at the per-class thresholds the model
# learned (mlrpl eval --model-thresholds). Prints: dataset p seed mAP CF1 OF1 (0.5) CF1 OF1 (learned).
# Needs the runs' last.pt (not in git: rerun the sweeps) and MLRPL_DATA.
cd "$(dirname "$0")/.."
for d in voc2007-2k coco128; do
  for p in 0.1 0.3 0.5; do
    for s in 0 1 2; do
      r=benchmarks/results/$d/runs/satl_p${p}_s${s}
      a=$(.venv/bin/mlrpl eval --checkpoint $r/last.pt --json 2>/dev/null | python3 -c "import json,sys; m=json.load(sys.stdin); print(f\"{m['mAP']:.2f} {m['CF1']:.2f} {m['OF1']:.2f}\")")
      b=$(.venv/bin/mlrpl eval --checkpoint $r/last.pt --model-thresholds --json 2>/dev/null | python3 -c "import json,sys; m=json.load(sys.stdin); print(f\"{m['CF1']:.2f} {m['OF1']:.2f}\")")
      echo "$d $p $s $a $b"
    done
  done
done
