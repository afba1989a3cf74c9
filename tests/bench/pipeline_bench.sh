#!/usr/bin/env bash
# A single-file checkpoint to a compiled Resources folder (issue 22):
# tests/bench/pipeline_bench.sh MLC_BIN WORKDIR [sd|sdxl]
#
# Writes the full-size synthetic fp16 checkpoint into WORKDIR once (the pipeline_bench example:
# WORKDIR/sd15_single_file.safetensors, 2.1 GB, or WORKDIR/sdxl_single_file.safetensors, 6.9 GB;
# a file already there is kept), then runs `mlc pipeline sd|sdxl --weights CKPT -o OUT` RUNS
# times under GNU time (-v), deleting OUT before each run, and prints per run the wall seconds,
# CPU seconds (user + sys) and peak RSS, then the medians against the goals: SD 1.5 <= 20 s and
# <= 1.5 GB peak RSS, SDXL base <= 60 s.
#
# A binary without `mlc pipeline` gets the FALLBACK, labelled as such: the parts the pipeline
# makes, built one after another with `mlc build ... --compile` from the same file into OUT
# (Unet ane at the default latent, VAEDecoder and VAEEncoder at 512 / 1024, TextEncoder(2)),
# one line per part; a run's wall and CPU are the parts' sums, its peak RSS their largest.
#
# Environment: RUNS (default 1), EXTRA (more flags for every command), OUT (default
# WORKDIR/resources_<model>), KEEP_PACKAGES=1 (the fallback keeps each .mlpackage beside its
# .mlmodelc; by default it deletes it after the part's timing, as the pipeline keeps none). The
# checkpoint stays; delete it by hand (SDXL's is 6.9 GB).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 MLC_BIN WORKDIR [sd|sdxl]" >&2
    exit 2
fi
MLC=$(realpath "$1")
DIR=$(realpath -m "$2")
MODEL=${3:-sd}
RUNS=${RUNS:-1}
EXTRA=${EXTRA:-}
OUT=${OUT:-$DIR/resources_$MODEL}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TIME=/usr/bin/time
if ! "$TIME" -v true >/dev/null 2>&1; then
    echo "$0: needs GNU time at $TIME (apt-get install time)" >&2
    exit 2
fi
case $MODEL in
sd)
    # 1.5 GB = 1430 MiB.
    name=sd15 goal_s=20 goal_mib=1430
    # model, part, Resources name, flags
    parts=(
        "sd-unet unet Unet --layout ane"
        "sd-vae decoder VAEDecoder --image-size 512"
        "sd-vae encoder VAEEncoder --image-size 512 --moments"
        "clip-l encoder TextEncoder"
    )
    ;;
sdxl)
    # No memory goal for SDXL; the line still shows the peak.
    name=sdxl goal_s=60 goal_mib=0
    parts=(
        "sdxl-unet unet Unet --layout ane"
        "sdxl-vae decoder VAEDecoder --image-size 1024 --precision fp32"
        "sdxl-vae encoder VAEEncoder --image-size 1024 --precision fp32 --moments"
        "clip-l encoder TextEncoder --hidden-layer penultimate"
        "clip-bigg encoder TextEncoder2 --hidden-layer penultimate"
    )
    ;;
*)
    echo "$0: unknown model $MODEL (sd, sdxl)" >&2
    exit 2
    ;;
esac
CKPT=$DIR/${name}_single_file.safetensors
mkdir -p "$DIR"
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

if [ -f "$CKPT" ]; then
    echo "== checkpoint: kept $CKPT ($(du -BM "$CKPT" | cut -f1))"
else
    echo "== checkpoint (cargo run --release --example pipeline_bench -- $DIR $name)"
    (cd "$ROOT" && cargo run -q --release --example pipeline_bench -- "$DIR" "$name") | sed 's/^/    /'
fi

# Runs one command under GNU time; appends "wall cpu rss_kib" to $LOG/$1 and prints a line
# labelled $2. Fails naming the command's last error line.
timed() {
    local file=$1 label=$2
    shift 2
    if ! "$TIME" -v -o "$LOG/time" "$@" >"$LOG/out" 2>"$LOG/err"; then
        echo "$label FAILED: $(tail -1 "$LOG/err")" >&2
        echo "    command: $*" >&2
        exit 1
    fi
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, t, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + t[i] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident set size/ { r = $2 }
        END { printf "%.2f %.2f %d\n", w, u + s, r }' "$LOG/time" >"$LOG/last"
    read -r wall cpu rss <"$LOG/last"
    printf '%-28s %7.2f s %7.2f s %6d MiB  load %s\n' "$label" "$wall" "$cpu" $((rss / 1024)) \
        "$(cut -d' ' -f1 /proc/loadavg)"
    cat "$LOG/last" >>"$LOG/$file"
}

if "$MLC" pipeline --help >/dev/null 2>&1; then
    mode="mlc pipeline $MODEL"
    echo "== $mode --weights $CKPT -o $OUT $EXTRA ($(nproc) cores)"
    printf '%-28s %9s %9s %10s\n' "" wall CPU "peak RSS"
    for run in $(seq "$RUNS"); do
        rm -rf "$OUT"
        # shellcheck disable=SC2086 # $EXTRA is a flag list
        timed runs "run $run" "$MLC" pipeline "$MODEL" --weights "$CKPT" -o "$OUT" $EXTRA
    done
else
    mode="FALLBACK: no \`mlc pipeline\` in $MLC; the parts built in sequence with --compile"
    echo "== $mode ($(nproc) cores)"
    printf '%-28s %9s %9s %10s\n' "" wall CPU "peak RSS"
    for run in $(seq "$RUNS"); do
        rm -rf "$OUT"
        mkdir -p "$OUT"
        : >"$LOG/parts"
        for p in "${parts[@]}"; do
            read -r model part file flags <<<"$p"
            # shellcheck disable=SC2086 # $flags and $EXTRA are flag lists
            timed parts "run $run $file" "$MLC" build "$model" --part "$part" --weights "$CKPT" \
                $flags $EXTRA --compile -o "$OUT/$file.mlpackage"
            # As the pipeline leaves only the .mlmodelc without --keep-packages (untimed).
            [ "${KEEP_PACKAGES:-}" = 1 ] || rm -rf "$OUT/$file.mlpackage"
        done
        awk '{ w += $1; c += $2; if ($3 > r) r = $3 } END { printf "%.2f %.2f %d\n", w, c, r }' \
            "$LOG/parts" >>"$LOG/runs"
        read -r wall cpu rss < <(tail -1 "$LOG/runs")
        printf '%-28s %7.2f s %7.2f s %6d MiB\n' "run $run (all parts)" "$wall" "$cpu" $((rss / 1024))
    done
fi
echo "== output: $OUT ($(du -sBM "$OUT" | cut -f1)): $(cd "$OUT" && ls | tr '\n' ' ')"

median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }
wall=$(cut -d' ' -f1 "$LOG/runs" | median)
cpu=$(cut -d' ' -f2 "$LOG/runs" | median)
rss=$(($(cut -d' ' -f3 "$LOG/runs" | median | cut -d. -f1) / 1024))
verdict=$(awk -v w="$wall" -v r="$rss" -v gw="$goal_s" -v gr="$goal_mib" 'BEGIN {
    ok = w <= gw && (gr == 0 || r <= gr)
    printf "%s (goal <= %d s%s)", ok ? "meets the goal" : "MISSES the goal", gw, gr ? sprintf(", <= %d MiB", gr) : "" }')
printf '== %s %s, median of %d: %.2f s wall, %.2f s CPU, %d MiB peak RSS: %s\n' "$name" \
    "$([ "${mode#FALLBACK}" = "$mode" ] && echo pipeline || echo "parts (FALLBACK)")" "$RUNS" \
    "$wall" "$cpu" "$rss" "$verdict"
