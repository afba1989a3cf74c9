#!/usr/bin/env bash
# Whole-process UNet build benchmarks (issue 20): tests/bench/unet_bench.sh MLC_BIN DIR
#
# Writes the full-size synthetic fp16 UNets into DIR once (the unet_bench example: DIR/sd15/unet,
# DIR/sdxl/unet; a complete file is kept), then builds each of sd-unet and sdxl-unet, fp16 and
# --palettize 4, in the standard and the ane layout, timed as a whole process by GNU time, and
# prints one line per build (wall seconds, peak RSS, package size, MIL ops, load average) and
# `mlc inspect --ane`'s op table. Packages are deleted after inspection (SDXL's are 5 GB each).
#
# Environment: MODELS (default "sd15 sdxl"), RUNS (builds per setting, default 1), EXTRA (more
# build flags, e.g. "--latent-size 64"), OUT (package folder, default DIR/packages), KEEP=1 keeps
# the packages. Goals: fp16 SD 1.5 <= 10 s and 1 GB, SDXL <= 30 s and 2 GB; --palettize 4 SD 1.5
# <= 30 s, SDXL <= 90 s.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 MLC_BIN DIR" >&2
    exit 2
fi
MLC=$(realpath "$1")
DIR=$(realpath -m "$2")
MODELS=${MODELS:-sd15 sdxl}
RUNS=${RUNS:-1}
EXTRA=${EXTRA:-}
OUT=${OUT:-$DIR/packages}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TIME=/usr/bin/time
if ! "$TIME" -f %e true >/dev/null 2>&1; then
    echo "$0: needs GNU time at $TIME (apt-get install time)" >&2
    exit 2
fi
mkdir -p "$DIR" "$OUT"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

echo "== weights (cargo run --release --example unet_bench -- $DIR)"
for m in $MODELS; do
    (cd "$ROOT" && "$TIME" -f "%e %M" -o "$LOG/gen" cargo run -q --release --example unet_bench -- "$DIR" "$m") |
        sed 's/^/    /'
    read -r secs rss <"$LOG/gen"
    bytes=$(du -sb "$DIR/$m/unet/diffusion_pytorch_model.fp16.safetensors" | cut -f1)
    printf '%s: writer process %s s (with cargo), peak RSS %d MiB, %s MB on disk\n' \
        "$m" "$secs" $((rss / 1024)) "$(mb "$bytes")"
done

echo "== builds ($(nproc) cores; RSS in MiB of GNU time's KiB, package by du -sb in MB)"
for m in $MODELS; do
    case $m in
    sd15) model=sd-unet ;;
    sdxl) model=sdxl-unet ;;
    *)
        echo "$0: unknown model $m (sd15, sdxl)" >&2
        exit 2
        ;;
    esac
    weights=$DIR/$m/unet/diffusion_pytorch_model.fp16.safetensors
    for compress in "" "--palettize 4"; do
        for layout in standard ane; do
            setting=${compress:-fp16}
            pkg=$OUT/${m}_${layout}${compress:+_p4}.mlpackage
            for _ in $(seq "$RUNS"); do
                rm -rf "$pkg"
                load=$(cut -d' ' -f1 /proc/loadavg)
                # shellcheck disable=SC2086 # $compress and $EXTRA are flag lists
                if "$TIME" -f "%e %M" -o "$LOG/time" "$MLC" build "$model" --weights "$weights" \
                    --layout "$layout" $compress $EXTRA -o "$pkg" >"$LOG/out" 2>"$LOG/err"; then
                    read -r secs rss <"$LOG/time"
                    ops=$(sed -n 's/^wrote .* (\([0-9]*\) ops.*/\1/p' "$LOG/out")
                    bytes=$(du -sb "$pkg" | cut -f1)
                    printf '%-10s %-14s %-8s %7.2f s %6d MiB RSS %8s MB package %6s MIL ops  load %s\n' \
                        "$model" "$setting" "$layout" "$secs" $((rss / 1024)) \
                        "$(mb "$bytes")" "$ops" "$load"
                else
                    printf '%-10s %-14s %-8s FAILED: %s\n' "$model" "$setting" "$layout" \
                        "$(grep -v '^Command exited' "$LOG/err" | tail -1)"
                fi
            done
            if [ -d "$pkg" ]; then
                "$MLC" inspect --ane "$pkg" | sed 's/^/    /'
                [ "${KEEP:-0}" = 1 ] || rm -rf "$pkg"
            fi
        done
    done
done
