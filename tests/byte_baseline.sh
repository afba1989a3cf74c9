#!/usr/bin/env bash
# Builds a fixed set of packages with the mlc binary given and prints sha256 of every file in
# each package (Manifest UUIDs excluded: Manifest.json is hashed with its identifiers blanked).
# usage: tests/byte_baseline.sh MLC_BIN OUTDIR > hashes.txt
# A refactor must not change a byte: run it with the binary before and after, and diff the two.
set -u
MLC="$1"; OUT="$2"; S="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared" && pwd)"
rm -rf "$OUT"; mkdir -p "$OUT"
W=$S/weights/taef2_decoder.safetensors
E=$S/weights/taef2_encoder.safetensors
V=$S/fixtures/vae
C=$S/fixtures/clip
i=0
b() { i=$((i+1)); local o="$OUT/p$i.mlpackage"; echo "== p$i: $*"; "$MLC" build "$@" -o "$o" >/dev/null 2>"$OUT/p$i.err" || { echo "FAILED: $(tail -1 "$OUT/p$i.err")"; return; }
  (cd "$o" && find . -type f | sort | while read -r f; do
     if [[ $f == *Manifest.json ]]; then echo "$(sed -E 's/[0-9A-F]{8}-[0-9A-F-]{27}/UUID/g' "$f" | sha256sum | cut -c1-16) $f";
     else echo "$(sha256sum "$f" | cut -c1-16) $f"; fi; done); }
b flux2 --weights $W
b flux2 --weights $W --precision fp32
b flux2 --weights $W --io-precision fp32 --image-size 768,512x1024
b flux2 --weights $W --latent-size 16,24x32 --multifunction --target ios18
b flux2 --weights $W --input-layout nhwc --output-type image
b flux2 --weights $W --palettize 4
b flux2 --weights $W --palettize 8 --granularity per-grouped-channel=16 --target ios18
b flux2 --weights $W --quantize int8
b flux2 --weights $W --quantize int8 --block-size 32 --target ios18
b flux2 --part encoder --weights $E --image-size 256 --input-type image
b flux2 --weights $W --palettize 4 --calibration $S/calibration --encoder-weights $E --image-size 128
b flux2 --weights $W --quantize-activations int8 --calibration $S/calibration --encoder-weights $E --image-size 128 --target ios17
b sd-vae --weights $V/sd/original.safetensors --image-size 64
b sd-vae --weights $V/sd/diffusers/diffusion_pytorch_model.safetensors --image-size 64 --latent-scaling
b sd-vae --part encoder --weights $V/sd/original.safetensors --image-size 64 --logvar
b flux2-vae --weights $V/flux2/original.safetensors --image-size 64 --input packed
b flux1-vae --weights $V/flux1/original.safetensors --image-size 64 --precision fp32
b clip-l --weights $C/clip_l/model.safetensors
b clip-l --weights $C/clip_l/model.safetensors --layout ane --hidden-layer penultimate
b clip-bigg --weights $C/bigg/model.safetensors --hidden-layer 2 --palettize 4
b clip-vision --weights $C/vision/model.safetensors
b clip-vision --weights $C/vision/model.safetensors --layout ane --input-type image --quantize int8
for n in 1 5 10 18; do
  echo "== compile p$n"
  "$MLC" compile "$OUT/p$n.mlpackage" -o "$OUT/p$n.mlmodelc" >/dev/null 2>&1 || { echo FAILED; continue; }
  (cd "$OUT/p$n.mlmodelc" && find . -type f | sort | while read -r f; do echo "$(sha256sum "$f" | cut -c1-16) $f"; done)
done
