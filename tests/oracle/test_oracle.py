#!/usr/bin/env python3
"""Self-checks for tests/oracle/check_packages.py (plain script, no pytest).

Builds known-good packages with coremltools' MIL Builder in a temp dir, then
damages copies of them in specific ways and asserts the oracle's verdict:

  * REJECT cases must fail, with a reason containing an expected substring;
  * ACCEPT cases must pass. Some ACCEPT cases are deliberate corruptions that
    coremltools' loader cannot see (weight values, same-signature op swaps);
    they are kept here so the oracle's blind spots are written down and a
    change in coremltools' behaviour shows up.

Exit status 0 if every expectation holds, 1 otherwise.
"""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import check_packages as oracle  # noqa: E402  (also silences coremltools' import noise)

ct = oracle.ct
import numpy as np  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.proto import MIL_pb2  # noqa: E402

MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
WEIGHT = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")


# ------------------------------------------------------------------ builders


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def build_conv(path, seed=0, target=ct.target.iOS16):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal((8,)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))], opset_version=target)
    def prog(x):
        y = mb.conv(x=x, weight=w, bias=b, pad_type="custom", pad=[1, 1, 1, 1], name="c")
        return mb.relu(x=y, name="out")

    m = _quiet(ct.convert, prog, convert_to="mlprogram", minimum_deployment_target=target)
    m.save(path)
    return path


def build_multifunction(path, tmp):
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    a = build_conv(os.path.join(tmp, "mf_a.mlpackage"), seed=1)
    b = build_conv(os.path.join(tmp, "mf_b.mlpackage"), seed=2)
    desc = MultiFunctionDescriptor()
    desc.add_function(a, src_function_name="main", target_function_name="fa")
    desc.add_function(b, src_function_name="main", target_function_name="fb")
    desc.default_function_name = "fa"
    _quiet(save_multifunction, desc, path)
    return path


def build_flexible(path):
    from coremltools.converters.mil.mil import get_new_symbol

    w = np.random.default_rng(3).standard_normal((3, 4, 3, 3)).astype(np.float32)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 4, get_new_symbol(), get_new_symbol()))],
        opset_version=ct.target.iOS16,
    )
    def prog(x):
        return mb.sigmoid(x=mb.conv(x=x, weight=w, pad_type="same"), name="y")

    dim = ct.RangeDim(8, 64, default=16)
    m = _quiet(
        ct.convert,
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        inputs=[ct.TensorType(name="x", shape=(1, 4, dim, dim))],
    )
    m.save(path)
    return path


def build_image(path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.relu(x=x, name="y")

    m = _quiet(
        ct.convert,
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        inputs=[ct.ImageType(name="x", shape=(1, 3, 8, 8), color_layout=ct.colorlayout.BGR, scale=1 / 255.0)],
    )
    m.save(path)
    return path


def build_stateful(path):
    @mb.program(
        input_specs=[
            mb.StateTensorSpec((1, 4), dtype=ct.converters.mil.mil.types.fp16),
            mb.TensorSpec((1, 4), dtype=ct.converters.mil.mil.types.fp16),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(acc, x):
        v = mb.read_state(input=acc)
        s = mb.add(x=v, y=x)
        mb.coreml_update_state(state=acc, value=s)
        return mb.mul(x=s, y=np.float16(2.0), name="y")

    m = _quiet(ct.convert, prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    m.save(path)
    return path


# ------------------------------------------------------------------ spec edits


def read_spec(pkg):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    with open(os.path.join(pkg, MODEL), "rb") as f:
        spec.ParseFromString(f.read())
    return spec


def write_spec(pkg, spec):
    with open(os.path.join(pkg, MODEL), "wb") as f:
        f.write(spec.SerializeToString())


def edit_spec(fn):
    def mutate(pkg):
        spec = read_spec(pkg)
        fn(spec)
        write_spec(pkg, spec)

    return mutate


def main_ops(spec, func="main"):
    f = spec.mlProgram.functions[func]
    return f.block_specializations[f.opset].operations


def op_by_output(spec, name, func="main"):
    for op in main_ops(spec, func):
        if op.outputs[0].name == name:
            return op
    raise KeyError(name)


def op_by_type(spec, typ, func="main"):
    for op in main_ops(spec, func):
        if op.type == typ:
            return op
    raise KeyError(typ)


def int32_scalar(v):
    val = MIL_pb2.Value()
    val.type.tensorType.dataType = MIL_pb2.INT32
    val.immediateValue.tensor.ints.values.append(v)
    return val


def set_pad_type_int(spec):
    op = op_by_output(spec, "c_pad_type_0")
    op.attributes["val"].CopyFrom(int32_scalar(1))
    op.outputs[0].type.CopyFrom(int32_scalar(1).type)


def set_pad_type_bogus(spec):
    op = op_by_output(spec, "c_pad_type_0")
    op.attributes["val"].immediateValue.tensor.strings.values[0] = "sideways"


def rename_conv(new_type):
    def f(spec):
        op_by_type(spec, "conv").type = new_type

    return f


def relu_to(new_type):
    def f(spec):
        op_by_type(spec, "relu").type = new_type

    return f


def drop_conv_input(name):
    def f(spec):
        del op_by_type(spec, "conv").inputs[name]

    return f


def conv_x_fp32(spec):
    # conv reads the fp32 model input while its weight is fp16
    op_by_type(spec, "conv").inputs["x"].arguments[0].name = "x"


def dangling_input(spec):
    op_by_type(spec, "relu").inputs["x"].arguments[0].name = "no_such_var"


def conv_out_shape(spec):
    dims = op_by_type(spec, "conv").outputs[0].type.tensorType.dimensions
    dims[1].constant.size = 9


def conv_out_dtype(spec):
    op_by_type(spec, "conv").outputs[0].type.tensorType.dataType = MIL_pb2.FLOAT32


def const_out_shape(spec):
    op = op_by_output(spec, "c_weight_0_to_fp16")
    op.outputs[0].type.tensorType.dimensions[0].constant.size = 7


def const_val_shape(spec):
    # declared blob tensor larger than the data stored for it
    op = op_by_output(spec, "c_weight_0_to_fp16")
    op.attributes["val"].type.tensorType.dimensions[0].constant.size = 16
    op.outputs[0].type.tensorType.dimensions[0].constant.size = 16


def weight_fp32_mix(spec):
    # conv weight reading fp16 blob bytes as fp32: dtype of x (fp16) != weight (fp32)
    op = op_by_output(spec, "c_weight_0_to_fp16")
    op.attributes["val"].type.tensorType.dataType = MIL_pb2.FLOAT32
    op.outputs[0].type.tensorType.dataType = MIL_pb2.FLOAT32


def blob_offset(off):
    def f(spec):
        op = op_by_output(spec, "c_weight_0_to_fp16")
        op.attributes["val"].blobFileValue.offset = off

    return f


def blob_filename(name):
    def f(spec):
        op = op_by_output(spec, "c_weight_0_to_fp16")
        op.attributes["val"].blobFileValue.fileName = name

    return f


def duplicate_name(spec):
    op_by_type(spec, "relu").outputs[0].name = "c_pad_0"
    # keep the program wired: the final cast now reads the (renamed) relu output
    op_by_output(spec, "out").inputs["x"].arguments[0].name = "c_pad_0"


def opset_mismatch(spec):
    f = spec.mlProgram.functions["main"]
    blk = MIL_pb2.Block()
    blk.CopyFrom(f.block_specializations[f.opset])
    del f.block_specializations[f.opset]
    f.opset = "CoreML5"
    f.block_specializations["CoreML5"].CopyFrom(blk)


def spec_version(v):
    def f(spec):
        spec.specificationVersion = v

    return f


def desc_input_shape(spec):
    spec.description.input[0].type.multiArrayType.shape[2] = 16


def desc_input_dtype(spec):
    spec.description.input[0].type.multiArrayType.dataType = 65552  # FLOAT16


def desc_output_name(spec):
    spec.description.output[0].name = "output"


def desc_extra_input(spec):
    extra = spec.description.input.add()
    extra.CopyFrom(spec.description.input[0])
    extra.name = "y"


def desc_output_shape(spec):
    spec.description.output[0].type.multiArrayType.shape[1] = 4


def mil_output_rename(spec):
    f = spec.mlProgram.functions["main"]
    blk = f.block_specializations[f.opset]
    blk.outputs[0] = "out_cast_fp16"  # a real var, but not the described output


def mf_default(spec):
    spec.description.defaultFunctionName = "nope"


def mf_desc_shape(spec):
    fb = [f for f in spec.description.functions if f.name == "fb"][0]
    fb.input[0].type.multiArrayType.shape[1] = 3


def mf_bad_op(spec):
    op_by_type(spec, "conv", func="fb").type = "conv_transpose_2d_nope"


def image_output(spec):
    # describe the (1,3,8,8) fp32 output as an 8x8 RGB image: valid Core ML
    out = spec.description.output[0]
    out.type.ClearField("multiArrayType")
    out.type.imageType.width = 8
    out.type.imageType.height = 8
    out.type.imageType.colorSpace = 20  # RGB


def image_input_gray(spec):
    spec.description.input[0].type.imageType.colorSpace = 10  # GRAYSCALE


def flex_rank(spec):
    del spec.description.input[0].type.multiArrayType.shape[0]


def state_desc_missing(spec):
    del spec.description.state[:]


# ------------------------------------------------------------------ file edits


def truncate(rel, keep):
    def f(pkg):
        p = os.path.join(pkg, rel)
        size = os.path.getsize(p)
        n = keep(size)
        with open(p, "r+b") as fh:
            fh.truncate(n)

    return f


def poke(rel, offset, data):
    def f(pkg):
        with open(os.path.join(pkg, rel), "r+b") as fh:
            fh.seek(offset)
            fh.write(data)

    return f


def overwrite(rel, data):
    def f(pkg):
        with open(os.path.join(pkg, rel), "wb") as fh:
            fh.write(data)

    return f


def remove(rel):
    def f(pkg):
        p = os.path.join(pkg, rel)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    return f


def flip_weight_values(pkg):
    p = os.path.join(pkg, WEIGHT)
    with open(p, "r+b") as fh:
        fh.seek(128)
        data = bytearray(fh.read(16))
        fh.seek(128)
        fh.write(bytes(b ^ 0xFF for b in data))


def misalign_blob(pkg):
    # data moved from offset 128 to 130 (file grows by 2): still readable
    # through the metadata's offset, but not where MILBlob's layout puts it
    with open(os.path.join(pkg, WEIGHT), "r+b") as fh:
        fh.seek(80)
        fh.write(struct.pack("<Q", 130))
        fh.seek(0, 2)
        fh.write(b"\0\0")


def manifest_root(pkg):
    p = os.path.join(pkg, "Manifest.json")
    with open(p) as fh:
        m = json.load(fh)
    m["rootModelIdentifier"] = "00000000-0000-0000-0000-000000000000"
    with open(p, "w") as fh:
        json.dump(m, fh)


# ------------------------------------------------------------------ cases
# (name, base, mutation or None, expect_ok, substring expected in the reason)
# Blob layout: 64-byte file header, per-blob 64-byte metadata at 64
# (sentinel 0xDEADBEEF, dtype, size, data offset), data at 128.

CASES = [
    ("good conv (iOS16)", "conv", None, True, None),
    ("good conv (iOS15)", "conv15", None, True, None),
    ("good conv (iOS18)", "conv18", None, True, None),
    ("good multifunction", "mf", None, True, None),
    ("good stateful (iOS18)", "state", None, True, None),
    ("good flexible input (RangeDim)", "flex", None, True, None),
    ("good image input (BGR)", "img", None, True, None),
    ("good image output (RGB, spec edit)", "img", edit_spec(image_output), True, None),
    # ---- container / protobuf damage
    ("model.mlmodel garbage", "conv", overwrite(MODEL, b"\xff\x00garbage" * 7), False, "cannot read"),
    ("model.mlmodel truncated", "conv", truncate(MODEL, lambda n: n // 2), False, "cannot read"),
    ("model.mlmodel empty", "conv", overwrite(MODEL, b""), False, None),
    ("model.mlmodel missing", "conv", remove(MODEL), False, "does not exist"),
    ("Manifest.json garbage", "conv", overwrite("Manifest.json", b"{not json"), False, "Manifest.json"),
    ("Manifest.json bad root id", "conv", manifest_root, False, "rootModelIdentifier"),
    # ---- weight file damage
    ("weight.bin truncated mid-data", "conv", truncate(WEIGHT, lambda n: n - 100), False, "MIL loader"),
    ("weight.bin truncated to header", "conv", truncate(WEIGHT, lambda n: 64), False, "MIL loader"),
    ("weight.bin empty", "conv", truncate(WEIGHT, lambda n: 0), False, "MIL loader"),
    ("weight.bin missing", "conv", remove(WEIGHT), False, "Could not open"),
    ("weight.bin bad sentinel", "conv", poke(WEIGHT, 64, b"\0\0\0\0"), False, "MIL loader"),
    ("weight.bin blob size too big", "conv", poke(WEIGHT, 72, struct.pack("<Q", 4096)), False, "MIL loader"),
    ("blob offset not a blob", "conv", edit_spec(blob_offset(96)), False, "MIL loader"),
    ("blob offset past EOF", "conv", edit_spec(blob_offset(1 << 20)), False, "MIL loader"),
    ("weight.bin blob data misaligned", "conv", misalign_blob, False, "64-aligned"),
    ("weight.bin header count too high", "conv", poke(WEIGHT, 0, struct.pack("<I", 2)), False, "past EOF"),
    ("weight.bin header version wrong", "conv", poke(WEIGHT, 4, struct.pack("<I", 1)), False, "version"),
    ("blob fileName no @model_path", "conv", edit_spec(blob_filename("weights/weight.bin")), False, "@model_path"),
    ("blob fileName other file", "conv", edit_spec(blob_filename("@model_path/weights/w2.bin")), False, "Could not open"),
    ("const declares more data than blob", "conv", edit_spec(const_val_shape), False, "MIL loader"),
    # ---- op-level type errors
    ("conv pad_type is int", "conv", edit_spec(set_pad_type_int), False, "MIL loader"),
    ("conv pad_type unknown string", "conv", edit_spec(set_pad_type_bogus), False, "MIL loader"),
    ("op renamed to unknown type", "conv", edit_spec(rename_conv("convolution")), False, "MIL loader"),
    ("conv renamed to conv_transpose", "conv", edit_spec(rename_conv("conv_transpose")), False, "MIL loader"),
    ("conv missing weight input", "conv", edit_spec(drop_conv_input("weight")), False, "MIL loader"),
    ("conv missing x input", "conv", edit_spec(drop_conv_input("x")), False, "MIL loader"),
    ("input refers to unknown var", "conv", edit_spec(dangling_input), False, "MIL loader"),
    ("conv declared output shape wrong", "conv", edit_spec(conv_out_shape), False, "MIL loader"),
    ("conv declared output dtype wrong", "conv", edit_spec(conv_out_dtype), False, "MIL loader"),
    ("conv x fp32, weight fp16", "conv", edit_spec(conv_x_fp32), False, "MIL loader"),
    ("fp16 x with fp32 weight", "conv", edit_spec(weight_fp32_mix), False, "MIL loader"),
    ("const declared output shape wrong", "conv", edit_spec(const_out_shape), False, "declared as"),
    ("duplicate SSA name", "conv", edit_spec(duplicate_name), False, "defined twice"),
    ("function opset != spec version", "conv", edit_spec(opset_mismatch), False, "opset"),
    ("spec version bumped (opset mismatch)", "conv", edit_spec(spec_version(9)), False, "opset"),
    ("spec version unknown", "conv", edit_spec(spec_version(99)), False, "specificationVersion"),
    # ---- description vs MIL
    ("description input shape", "conv", edit_spec(desc_input_shape), False, "input 'x'"),
    ("description input dtype", "conv", edit_spec(desc_input_dtype), False, "dataType"),
    ("description output name", "conv", edit_spec(desc_output_name), False, "outputs"),
    ("description output shape", "conv", edit_spec(desc_output_shape), False, "output 'out'"),
    ("description extra input", "conv", edit_spec(desc_extra_input), False, "inputs"),
    ("MIL output not the described one", "conv", edit_spec(mil_output_rename), False, "outputs"),
    ("multifunction bad default name", "mf", edit_spec(mf_default), False, "nope"),
    ("multifunction fb input shape", "mf", edit_spec(mf_desc_shape), False, "function fb"),
    ("multifunction fb unknown op", "mf", edit_spec(mf_bad_op), False, "MIL loader"),
    ("image input described as GRAYSCALE", "img", edit_spec(image_input_gray), False, "image needs"),
    ("flexible input description rank", "flex", edit_spec(flex_rank), False, "description shape"),
    ("state missing from description", "state", edit_spec(state_desc_missing), False, "states"),
    # ---- known blind spots: corrupt, yet the loader cannot tell
    ("BLIND: weight values flipped", "conv", flip_weight_values, True, None),
    ("BLIND: relu -> sigmoid (same signature)", "conv", edit_spec(relu_to("sigmoid")), True, None),
    ("BLIND: weight.bin trailing garbage", "conv", lambda p: open(os.path.join(p, WEIGHT), "ab").write(b"x" * 33), True, None),
]


def run_cli(args):
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "check_packages.py"), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def main():
    t0 = time.time()
    failures = []
    with tempfile.TemporaryDirectory(prefix="mlc-oracle-") as tmp:
        bases = {
            "conv": build_conv(os.path.join(tmp, "conv.mlpackage")),
            "conv15": build_conv(os.path.join(tmp, "conv15.mlpackage"), target=ct.target.iOS15),
            "conv18": build_conv(os.path.join(tmp, "conv18.mlpackage"), target=ct.target.iOS18),
            "mf": build_multifunction(os.path.join(tmp, "mf.mlpackage"), tmp),
            "state": build_stateful(os.path.join(tmp, "state.mlpackage")),
            "flex": build_flexible(os.path.join(tmp, "flex.mlpackage")),
            "img": build_image(os.path.join(tmp, "img.mlpackage")),
        }
        cases_dir = os.path.join(tmp, "cases")
        os.makedirs(cases_dir)
        for i, (name, base, mutate, expect_ok, needle) in enumerate(CASES):
            pkg = os.path.join(cases_dir, f"{i:02d}.mlpackage")
            shutil.copytree(bases[base], pkg)
            if mutate is not None:
                mutate(pkg)
            r = oracle.check_package(pkg)
            verdict = "ok  " if r["ok"] else "FAIL"
            detail = r.get("reason", "")
            good = r["ok"] == expect_ok and (needle is None or needle in detail)
            if not expect_ok and detail.startswith("oracle error"):
                good = False  # a crash in the oracle is not a verdict
            mark = "pass" if good else "WRONG"
            if r["ok"]:
                by = ""
            elif detail.startswith(("coremltools cannot read", "MIL loader")):
                by = "[coremltools] "
            else:
                by = "[oracle extra] "
            print(f"[{mark}] {name:40s} -> {verdict} {by}{detail}")
            if not good:
                failures.append(name)

        # ---- CLI contract: lines, exit codes, --json, directory search
        good_dir = os.path.join(tmp, "gooddir", "nested")
        os.makedirs(good_dir)
        shutil.copytree(bases["conv"], os.path.join(good_dir, "a.mlpackage"))
        shutil.copytree(bases["mf"], os.path.join(good_dir, "b.mlpackage"))
        empty = os.path.join(tmp, "empty")
        os.makedirs(empty)

        def expect(cond, what):
            print(f"[{'pass' if cond else 'WRONG'}] cli: {what}")
            if not cond:
                failures.append("cli: " + what)

        p = run_cli([os.path.join(tmp, "gooddir")])
        lines = p.stdout.strip().splitlines()
        expect(p.returncode == 0, "good dir exits 0")
        if p.returncode != 0:
            print(p.stdout + p.stderr)
        expect(len(lines) == 2 and all(ln.startswith("ok ") for ln in lines), "good dir prints two ok lines")
        expect("Failed to load" not in p.stderr, "coremltools runtime warnings are silenced")
        p = run_cli([cases_dir])
        expect(p.returncode == 1, f"cases dir exits 1 (got {p.returncode})")
        expect(sum(ln.startswith("FAIL ") for ln in p.stdout.splitlines()) > 10, "cases dir prints FAIL lines")
        p = run_cli([empty])
        expect(p.returncode == 2, f"dir without packages exits 2 (got {p.returncode})")
        p = run_cli([os.path.join(tmp, "does-not-exist")])
        expect(p.returncode == 1 and p.stdout.startswith("FAIL"), "missing path is a FAIL, exit 1")
        bad_i = [c[0] for c in CASES].index("model.mlmodel garbage")
        p = run_cli(["--json", os.path.join(tmp, "gooddir"), os.path.join(cases_dir, f"{bad_i:02d}.mlpackage")])
        try:
            js = json.loads(p.stdout)
            ok = (
                isinstance(js, list)
                and len(js) == 3
                and sum(r["ok"] for r in js) == 2
                and all("path" in r for r in js)
                and p.returncode == 1
            )
        except ValueError:
            ok = False
        expect(ok, "--json prints a JSON list and keeps exit codes")

    print(f"oracle self-check: {len(CASES)} cases, {len(failures)} wrong, {time.time() - t0:.1f}s")
    if failures:
        print("wrong verdicts: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
