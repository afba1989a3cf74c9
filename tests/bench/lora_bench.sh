#!/usr/bin/env bash
# What fusing a LoRA costs a full-size UNet build (issue 21): tests/bench/lora_bench.sh MLC_BIN DIR
#
# Writes the full-size synthetic fp16 UNet and its rank-32 kohya LoRA into DIR once (the
# unet_bench example: DIR/sdxl/unet, DIR/sdxl/lora_r32.safetensors, 722 modules in SGM names,
# alpha 16), then builds the UNet (fp16, default sizes) without and with `--lora`, alternating so
# that a busy machine slows both alike, RUNS times each, timed as a whole process by GNU time.
# Prints one line per build (wall seconds, CPU seconds user+sys, peak RSS, the build's own "load
# weights" stage, load average) and the medians with and without and their difference. Goal:
# the LoRA adds <= 2 s to the SDXL build.
#
# Environment: MODEL (sdxl or sd15, default sdxl), RUNS (default 3), EXTRA (more build flags),
# OUT (package folder, default DIR/packages; each package is deleted after its build).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 MLC_BIN DIR" >&2
    exit 2
fi
MLC=$(realpath "$1")
DIR=$(realpath -m "$2")
MODEL=${MODEL:-sdxl}
RUNS=${RUNS:-3}
EXTRA=${EXTRA:-}
OUT=${OUT:-$DIR/packages}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TIME=/usr/bin/time
if ! "$TIME" -f %e true >/dev/null 2>&1; then
    echo "$0: needs GNU time at $TIME (apt-get install time)" >&2
    exit 2
fi
case $MODEL in
sd15) model=sd-unet ;;
sdxl) model=sdxl-unet ;;
*)
    echo "$0: unknown MODEL $MODEL (sd15, sdxl)" >&2
    exit 2
    ;;
esac
mkdir -p "$DIR" "$OUT"
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

echo "== inputs (cargo run --release --example unet_bench -- $DIR $MODEL)"
(cd "$ROOT" && cargo run -q --release --example unet_bench -- "$DIR" "$MODEL") | sed 's/^/    /'
weights=$DIR/$MODEL/unet/diffusion_pytorch_model.fp16.safetensors
lora=$DIR/$MODEL/lora_r32.safetensors

echo "== $model builds ($(nproc) cores), alternating without and with --lora $lora"
printf '%-8s %9s %9s %9s %11s  %s\n' "" wall CPU "peak RSS" "load stage" "load avg"
pkg=$OUT/${MODEL}_lora_bench.mlpackage
for run in $(seq "$RUNS"); do
    for with in no yes; do
        flags=()
        [ "$with" = yes ] && flags=(--lora "$lora")
        rm -rf "$pkg"
        load=$(cut -d' ' -f1 /proc/loadavg)
        # shellcheck disable=SC2086 # $EXTRA is a flag list
        if ! "$TIME" -f "%e %U %S %M" -o "$LOG/time" "$MLC" build "$model" --weights "$weights" \
            "${flags[@]}" $EXTRA --timings -o "$pkg" >"$LOG/out" 2>"$LOG/err"; then
            echo "build ${flags[*]} FAILED: $(grep -v '^Command exited' "$LOG/err" | tail -1)" >&2
            exit 1
        fi
        read -r secs user sys rss <"$LOG/time"
        stage=$(cat "$LOG/out" "$LOG/err" | awk '$3 == "load" && $4 == "weights" { printf "%.2f", $1 / 1000 }')
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        label=$([ "$with" = yes ] && echo lora || echo base)
        printf '%-8s %7.2f s %7s s %5d MiB %9s s  %s\n' "$label $run" "$secs" "$cpu" \
            $((rss / 1024)) "$stage" "$load"
        echo "$secs $cpu $rss $stage" >>"$LOG/$label"
    done
done
rm -rf "$pkg"

median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }
col() { cut -d' ' -f"$2" "$LOG/$1" | median; }
echo "== medians of $RUNS"
printf '%-8s %9s %9s %9s %11s\n' "" wall CPU "peak RSS" "load stage"
for label in base lora; do
    printf '%-8s %7.2f s %7.2f s %5d MiB %9.2f s\n' "$label" "$(col "$label" 1)" \
        "$(col "$label" 2)" $(($(col "$label" 3) / 1024)) "$(col "$label" 4)"
done
awk -v w0="$(col base 1)" -v w1="$(col lora 1)" -v c0="$(col base 2)" -v c1="$(col lora 2)" \
    -v r0="$(col base 3)" -v r1="$(col lora 3)" -v s0="$(col base 4)" -v s1="$(col lora 4)" \
    'BEGIN { printf "%-8s %+7.2f s %+7.2f s %+5d MiB %+9.2f s\n", "lora-base", w1 - w0, c1 - c0, (r1 - r0) / 1024, s1 - s0 }'
