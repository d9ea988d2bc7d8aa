#!/usr/bin/env bash
# RQ2/RQ3 for translation on one GPU: configs/sweeps/translate_compress.py's two sizes, run as
# two sweeps side by side (neither fills an H200), then their workdirs' JSON files in one archive.
#
#   bench/translate_compress.sh ROOT OUT [SECONDS] [SIZES]
#
# ROOT holds the sweeps (ROOT/multi30k, ROOT/small); OUT receives translate_compress.tar.gz
# (config.json, metrics.jsonl, best/best.json, compress.jsonl, decodes, sweep logs: what
# `tl-jax report` reads) and the sweeps' output. SECONDS (default 540) ends both sweeps with
# SIGTERM; re-running the same command resumes them (a compress stage skips the points it has
# measured). SIZES (default "multi30k small") picks the sweeps. Data: $TL_JAX_DATA (default
# ../shared/data).
set -uo pipefail
root=${1:?ROOT}; out=${2:?OUT}; seconds=${3:-540}; sizes=${4:-multi30k small}
cd "$(dirname "$0")/.."
mkdir -p "$root" "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
for size in $sizes; do
  timeout -s TERM "$seconds" python3 -m tl_jax.cli sweep \
    --config="configs/sweeps/translate_compress.py:$size" --root="$root/$size" \
    > "$out/sweep_$size.log" 2>&1 &
done
wait
tar -czf "$out/translate_compress.tar.gz" -C "$root" \
  $(cd "$root" && find . \( -name checkpoints -o -name tokenizer -o -name compressed -o -name events \) -prune \
      -o -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.txt' -o -name '*.log' \) -print)
for size in $sizes; do
  echo "== $size: $(tail -n 1 "$out/sweep_$size.log")"
  python3 - "$root/$size/$size/translate/compress.jsonl" <<'EOF'
import json, os, sys
path = sys.argv[1]
lines = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
print(f"{len(lines)} points; " + "; ".join(f"{l['point']} BLEU {l['bleu']:.2f} {l['memory_bytes'] / 2**20:.1f} MiB"
                                          for l in lines[:1] + lines[-3:]))
EOF
done
