#!/usr/bin/env python3
"""Outside oracle for .mlpackage files written by mlc.

Usage:
    python tests/oracle/check_packages.py [--json] PKG_OR_DIR...

Each argument is an .mlpackage directory or a directory that is searched
recursively for *.mlpackage. Every package is checked WITHOUT running it (the
Core ML runtime only exists on macOS):

  1. coremltools reads it: ct.models.MLModel(path, skip_model_load=True).
  2. Manifest.json parses, its root model entry exists, every listed item exists.
  3. It is an mlProgram; every function's opset is the one coremltools
     pairs with spec.specificationVersion (the loader type-checks against
     that opset, so a mismatch would mean step 4 checked the wrong thing).
  4. coremltools' milproto loader rebuilds the MIL program; this runs every
     op's input validation and type inference, reads every referenced weight
     blob, and checks non-const ops' declared output types against inference.
     (Runs before 5-8 so its message is reported when it catches something.)
  5. Every blob reference is "@model_path/weights/<file>" and the file exists;
     each weight file has the layout MILBlob's reader walks (header count,
     sentinels, 64-byte alignment, in bounds) and every referenced offset is a
     blob's metadata offset. The loader only follows referenced offsets.
  6. SSA names are unique within each function (the loader silently
     overrides duplicates, so it does not catch this).
  7. Const ops' declared output types match their values (the loader skips
     this for consts).
  8. spec.description (or each spec.description.functions[i] for
     multifunction packages) agrees with the MIL function's inputs, states
     and outputs: names, dtypes and shapes.

Prints "ok PATH (spec N, opset X, K ops)" or "FAIL PATH: reason" per package.
Exit 0 if all ok, 1 if any failed, 2 if no package was found.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import traceback
import warnings

WEIGHTS_PREFIX = "@model_path/weights/"


def _import_coremltools():
    # Without the macOS runtime coremltools logs "Failed to load _MLModelProxy"
    # and friends on import; those are expected here.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with contextlib.redirect_stderr(io.StringIO()):
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.helper import proto_to_types
        from coremltools.converters.mil.frontend.milproto.load import load
        from coremltools.converters.mil.mil import types
        from coremltools.converters.mil.mil.types.type_tensor import is_compatible_type
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct, load, types, proto_to_types, is_compatible_type


ct, mil_load, types, proto_to_types, is_compatible_type = _import_coremltools()
from coremltools import _OPSET  # noqa: E402  (spec version -> "CoreMLn")


class CheckError(Exception):
    pass


def find_packages(args):
    """Return (packages, missing) — missing are arguments that do not exist."""
    found, missing = [], []
    for arg in args:
        p = os.path.normpath(arg)
        if not os.path.exists(p):
            missing.append(p)
        elif p.endswith(".mlpackage"):
            found.append(p)
        elif os.path.isdir(p):
            for root, dirs, _files in os.walk(p):
                for d in sorted(dirs):
                    if d.endswith(".mlpackage"):
                        found.append(os.path.join(root, d))
                # do not descend into packages
                dirs[:] = sorted(d for d in dirs if not d.endswith(".mlpackage"))
        else:
            missing.append(p)
    seen, out = set(), []
    for p in found:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out, missing


# ---------------------------------------------------------------- manifest


def check_manifest(pkg):
    mpath = os.path.join(pkg, "Manifest.json")
    if not os.path.isfile(mpath):
        raise CheckError("Manifest.json missing")
    try:
        with open(mpath, "rb") as f:
            manifest = json.load(f)
    except Exception as e:
        raise CheckError(f"Manifest.json is not valid JSON: {e}")
    entries = manifest.get("itemInfoEntries")
    root = manifest.get("rootModelIdentifier")
    if not isinstance(entries, dict) or root not in entries:
        raise CheckError("Manifest.json: rootModelIdentifier does not name an itemInfoEntries entry")
    for ident, entry in entries.items():
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not rel:
            raise CheckError(f"Manifest.json: entry {ident} has no path")
        if not os.path.exists(os.path.join(pkg, "Data", rel)):
            raise CheckError(f"Manifest.json: entry {ident} path Data/{rel} does not exist")
    if not os.path.isfile(os.path.join(pkg, "Data", entries[root]["path"])):
        raise CheckError("Manifest.json: root model is not a file")


# ---------------------------------------------------------------- proto walks


def iter_blocks(func):
    """All blocks of a MIL proto function, nested ones included."""
    stack = [func.block_specializations[k] for k in func.block_specializations]
    while stack:
        b = stack.pop()
        yield b
        for op in b.operations:
            stack.extend(op.blocks)


def iter_values(op):
    for v in op.attributes.values():
        yield v
    for arg in op.inputs.values():
        for binding in arg.arguments:
            if binding.WhichOneof("binding") == "value":
                yield binding.value


BLOB_ALIGN = 64
BLOB_SENTINEL = 0xDEADBEEF


def check_weight_file(path, referenced):
    """Blob storage layout as MILBlob's StorageReader walks it.

    storage_header (64 B): u32 count, u32 version (2). Then `count` blobs, each a
    64 B blob_metadata (u32 sentinel 0xDEADBEEF, u32 dtype, u64 sizeInBytes,
    u64 data offset, ...) at a 64-aligned offset, followed by its data; the next
    metadata is at the 64-aligned end of the previous data. coremltools' loader
    only follows the offsets the program references, so it accepts layouts the
    reader's enumeration (and Core ML) may not; we check the walk here.
    """
    import struct

    size = os.path.getsize(path)
    rel = os.path.basename(path)
    with open(path, "rb") as f:
        data = f.read()
    if size < 64:
        raise CheckError(f"{rel}: {size} bytes, shorter than the 64-byte storage header")
    count, version = struct.unpack_from("<II", data, 0)
    if version != 2:
        raise CheckError(f"{rel}: storage header version {version}, expected 2")
    offsets, off = set(), 64
    for i in range(count):
        if off + 64 > size:
            raise CheckError(f"{rel}: header says {count} blobs but blob {i} metadata at {off} is past EOF ({size})")
        sentinel, _dtype, nbytes, doff = struct.unpack_from("<IIQQ", data, off)
        if sentinel != BLOB_SENTINEL:
            raise CheckError(f"{rel}: blob {i} metadata at {off}: bad sentinel {sentinel:#x}")
        if doff % BLOB_ALIGN or doff < off + 64:
            raise CheckError(f"{rel}: blob {i} data offset {doff} is not 64-aligned after its metadata at {off}")
        if doff + nbytes > size:
            raise CheckError(f"{rel}: blob {i} data [{doff}, {doff + nbytes}) runs past EOF ({size})")
        offsets.add(off)
        end = doff + nbytes
        off = end + (-end) % BLOB_ALIGN
    for o in sorted(referenced):
        if o not in offsets:
            raise CheckError(f"{rel}: program references offset {o}, which is not one of the {count} blobs' metadata offsets")


def check_proto_structure(spec, weights_dir):
    """Returns (opset list, op count). Raises CheckError."""
    prog = spec.mlProgram
    version = spec.specificationVersion
    if version not in _OPSET:
        raise CheckError(f"specificationVersion {version} unknown to coremltools {ct.__version__}")
    if version < 6:
        raise CheckError(f"specificationVersion {version} < 6: ML programs need iOS15 (spec 6) or later")
    want_opset = _OPSET[version]
    if prog.version != 1:
        raise CheckError(f"mlProgram.version is {prog.version}, expected 1")
    if not prog.functions:
        raise CheckError("mlProgram has no functions")
    opsets, n_ops = [], 0
    blob_refs = {}  # weight file path -> referenced offsets
    for fname, func in prog.functions.items():
        if func.opset != want_opset:
            raise CheckError(
                f"function {fname}: opset {func.opset!r} but specificationVersion {version} "
                f"pairs with {want_opset!r}"
            )
        if func.opset not in func.block_specializations:
            raise CheckError(f"function {fname}: no block specialization for opset {func.opset}")
        if len(func.block_specializations) != 1:
            raise CheckError(
                f"function {fname}: {len(func.block_specializations)} block specializations, expected 1"
            )
        if func.opset not in opsets:
            opsets.append(func.opset)
        names = set()
        for inp in func.inputs:
            if inp.name in names:
                raise CheckError(f"function {fname}: duplicate input name {inp.name!r}")
            names.add(inp.name)
        for block in iter_blocks(func):
            for binp in block.inputs:
                if binp.name in names:
                    raise CheckError(f"function {fname}: block input {binp.name!r} redefines a name")
                names.add(binp.name)
            for op in block.operations:
                n_ops += 1
                if not op.outputs and op.type != "write_state":
                    raise CheckError(f"function {fname}: {op.type} op has no outputs")
                for out in op.outputs:
                    if not out.name:
                        raise CheckError(f"function {fname}: {op.type} op has an unnamed output")
                    if out.name in names:
                        raise CheckError(
                            f"function {fname}: name {out.name!r} defined twice (second by a {op.type} op)"
                        )
                    names.add(out.name)
                for v in iter_values(op):
                    if v.WhichOneof("value") != "blobFileValue":
                        continue
                    fn = v.blobFileValue.fileName
                    if not fn.startswith(WEIGHTS_PREFIX):
                        raise CheckError(
                            f"op {op.outputs[0].name}: blob fileName {fn!r} does not start with {WEIGHTS_PREFIX!r}"
                        )
                    wf = os.path.join(weights_dir, fn[len(WEIGHTS_PREFIX):])
                    if not os.path.isfile(wf):
                        raise CheckError(f"op {op.outputs[0].name}: blob file {fn!r} not found in package")
                    blob_refs.setdefault(wf, set()).add(v.blobFileValue.offset)
    for wf, refs in sorted(blob_refs.items()):
        check_weight_file(wf, refs)
    return opsets, n_ops


def check_declared_types(spec, program):
    """The loader checks declared output types of non-const ops only; check all."""
    inferred = {}
    for fname, func in program.functions.items():
        table = {}
        stack = [func]
        while stack:
            blk = stack.pop()
            for op in blk.operations:
                for v in op.outputs:
                    table[v.name] = v
                stack.extend(op.blocks)
        inferred[fname] = table
    for fname, func in spec.mlProgram.functions.items():
        table = inferred[fname]
        for block in iter_blocks(func):
            for op in block.operations:
                for out in op.outputs:
                    var = table.get(out.name)
                    if var is None:
                        # e.g. write_state has no PyMIL output of its own
                        continue
                    declared = proto_to_types(out.type)
                    got = var.sym_type
                    if not is_compatible_type(got, declared) and not (
                        types.is_tensor(got)
                        and types.is_scalar(declared)
                        and got.get_primitive() == declared
                    ):
                        raise CheckError(
                            f"function {fname}: {op.type} output {out.name!r} declared as "
                            f"{fmt_type(declared)} but is {fmt_type(got)}"
                        )


# ---------------------------------------------------------------- interface

ARRAY_DTYPES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "DOUBLE": "fp64", "INT32": "int32", "INT8": "int8"}


def fmt_type(t):
    try:
        if types.is_tensor(t):
            shape = ",".join(str(d) for d in t.get_shape())
            return f"tensor<{types.builtin_to_string(t.get_primitive())},[{shape}]>"
        if types.is_state(t):
            return f"state<{fmt_type(t.wrapped_type())}>"
        return types.builtin_to_string(t)
    except Exception:
        return repr(t)


def _is_int(d):
    return isinstance(d, int) or type(d).__name__.startswith(("int", "uint"))


def check_array(where, arr, var_type, flexible_ok=True):
    from coremltools.proto import FeatureTypes_pb2 as F

    dt_name = F.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
    if dt_name not in ARRAY_DTYPES:
        raise CheckError(f"{where}: description dataType {dt_name} is not valid")
    if not types.is_tensor(var_type):
        raise CheckError(f"{where}: description says multiArray but MIL type is {fmt_type(var_type)}")
    mil_dt = types.builtin_to_string(var_type.get_primitive())
    if ARRAY_DTYPES[dt_name] != mil_dt:
        raise CheckError(f"{where}: description dataType {dt_name} but MIL dtype is {mil_dt}")
    mil_shape = list(var_type.get_shape())
    flex = arr.WhichOneof("ShapeFlexibility")
    desc_shape = list(arr.shape)
    if not desc_shape and not flex:
        return  # outputs may leave the shape unspecified
    if desc_shape and len(desc_shape) != len(mil_shape):
        raise CheckError(f"{where}: description shape {desc_shape} but MIL shape is {mil_shape}")
    for i, d in enumerate(mil_shape):
        if not _is_int(d):
            if not flex and desc_shape and not flexible_ok:
                raise CheckError(f"{where}: MIL dim {i} is symbolic but description has no flexibility")
            continue
        if desc_shape and int(d) != desc_shape[i]:
            raise CheckError(f"{where}: description shape {desc_shape} but MIL shape is {mil_shape}")


def check_feature(where, feat, var_type, is_input):
    from coremltools.proto import FeatureTypes_pb2 as F

    kind = feat.type.WhichOneof("Type")
    if kind == "multiArrayType":
        check_array(where, feat.type.multiArrayType, var_type, flexible_ok=not is_input)
    elif kind == "imageType":
        img = feat.type.imageType
        cs = F.ImageFeatureType.ColorSpace.Name(img.colorSpace)
        chans = {"RGB": 3, "BGR": 3, "GRAYSCALE": 1, "GRAYSCALE_FLOAT16": 1}.get(cs)
        if chans is None:
            raise CheckError(f"{where}: image colorSpace {cs} is not valid")
        want_dt = "fp16" if cs == "GRAYSCALE_FLOAT16" else "fp32"
        if not types.is_tensor(var_type) or len(var_type.get_shape()) != 4:
            raise CheckError(f"{where}: image feature but MIL type is {fmt_type(var_type)}")
        mil_dt = types.builtin_to_string(var_type.get_primitive())
        if mil_dt != want_dt:
            raise CheckError(f"{where}: {cs} image needs MIL dtype {want_dt}, got {mil_dt}")
        n, c, h, w = var_type.get_shape()
        if (_is_int(n) and n != 1) or (_is_int(c) and c != chans):
            raise CheckError(f"{where}: {cs} image needs MIL shape (1,{chans},H,W), got {fmt_type(var_type)}")
        if img.WhichOneof("SizeFlexibility") is None:
            if (_is_int(h) and img.height and h != img.height) or (_is_int(w) and img.width and w != img.width):
                raise CheckError(
                    f"{where}: image is {img.height}x{img.width} but MIL shape is {fmt_type(var_type)}"
                )
    elif kind == "stateType":
        if not types.is_state(var_type):
            raise CheckError(f"{where}: description says state but MIL type is {fmt_type(var_type)}")
        check_array(where, feat.type.stateType.arrayType, var_type.wrapped_type(), flexible_ok=False)
    else:
        raise CheckError(f"{where}: feature type {kind} is not supported by this oracle")


def check_interface(label, desc_inputs, desc_outputs, desc_states, mil_func):
    mil_inputs = dict(mil_func.inputs)
    mil_states = {n: v for n, v in mil_inputs.items() if types.is_state(v.sym_type)}
    mil_plain = {n: v for n, v in mil_inputs.items() if n not in mil_states}

    d_in = [f.name for f in desc_inputs]
    d_st = [f.name for f in desc_states]
    if sorted(d_in) != sorted(mil_plain):
        raise CheckError(f"{label}: description inputs {d_in} but MIL inputs {list(mil_plain)}")
    if sorted(d_st) != sorted(mil_states):
        raise CheckError(f"{label}: description states {d_st} but MIL states {list(mil_states)}")
    for f in desc_inputs:
        check_feature(f"{label} input {f.name!r}", f, mil_plain[f.name].sym_type, True)
    for f in desc_states:
        check_feature(f"{label} state {f.name!r}", f, mil_states[f.name].sym_type, True)

    mil_outs = {v.name: v for v in mil_func.outputs}
    d_out = [f.name for f in desc_outputs]
    if len(mil_outs) != len(mil_func.outputs):
        raise CheckError(f"{label}: MIL outputs repeat a name: {[v.name for v in mil_func.outputs]}")
    if sorted(d_out) != sorted(mil_outs):
        raise CheckError(f"{label}: description outputs {d_out} but MIL outputs {list(mil_outs)}")
    if not d_out:
        raise CheckError(f"{label}: no outputs")
    for f in desc_outputs:
        check_feature(f"{label} output {f.name!r}", f, mil_outs[f.name].sym_type, False)


def check_descriptions(spec, program):
    desc = spec.description
    mil_funcs = program.functions
    if len(desc.functions) == 0:
        if set(mil_funcs) != {"main"}:
            raise CheckError(
                f"no description.functions, so the program must have exactly one function 'main'; "
                f"it has {sorted(mil_funcs)}"
            )
        check_interface("main", desc.input, desc.output, desc.state, mil_funcs["main"])
        return
    names = [f.name for f in desc.functions]
    if sorted(names) != sorted(mil_funcs):
        raise CheckError(f"description.functions {names} but MIL functions {sorted(mil_funcs)}")
    if desc.defaultFunctionName not in names:
        raise CheckError(f"defaultFunctionName {desc.defaultFunctionName!r} is not one of {names}")
    if len(desc.input) or len(desc.output) or len(desc.state):
        # coremltools leaves the top-level lists empty for multifunction models
        raise CheckError("multifunction model also has top-level description inputs/outputs")
    for fd in desc.functions:
        check_interface(f"function {fd.name}", fd.input, fd.output, fd.state, mil_funcs[fd.name])


# ---------------------------------------------------------------- driver


def _first_line(e):
    msg = str(e).strip() or repr(e)
    return f"{type(e).__name__}: {msg}"


def _loader_site(e):
    """Which op the loader was on, and where in coremltools it raised."""
    extra = ""
    tb, frames = e.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for fr in reversed(frames):
        if fr.f_code.co_name in ("_load_operation", "_load_const_op") and "op_spec" in fr.f_locals:
            op = fr.f_locals["op_spec"]
            out = op.outputs[0].name if len(op.outputs) else "?"
            extra = f"; while loading {op.type} op {out!r}"
            pt, dt = fr.f_locals.get("pymil_type"), fr.f_locals.get("proto_type")
            if pt is not None and dt is not None:
                extra += f" (declared {fmt_type(dt)}, inferred {fmt_type(pt)})"
            break
    for fr in reversed(traceback.extract_tb(e.__traceback__)):
        if "coremltools" in fr.filename:
            return f"{extra} [at {os.path.basename(fr.filename)}:{fr.lineno} in {fr.name}]"
    return extra


def check_package(pkg):
    result = {"path": pkg, "ok": False}
    try:
        if not os.path.isdir(pkg):
            raise CheckError("not a directory")
        weights_dir = os.path.join(pkg, "Data", "com.apple.CoreML", "weights")
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                model = ct.models.MLModel(pkg, skip_model_load=True)
            spec = model.get_spec()
        except Exception as e:
            why = f"coremltools cannot read the package: {_first_line(e)}"
            try:
                check_manifest(pkg)
            except CheckError as m:
                why += f" ({m})"  # coremltools' manifest errors can be cryptic
            raise CheckError(why)
        check_manifest(pkg)
        result["spec_version"] = spec.specificationVersion
        kind = spec.WhichOneof("Type")
        if kind != "mlProgram":
            raise CheckError(f"model type is {kind}, expected mlProgram")
        if spec.specificationVersion not in _OPSET:
            raise CheckError(
                f"specificationVersion {spec.specificationVersion} unknown to coremltools {ct.__version__}"
            )
        # coremltools' own verdict first, so its message is the one reported
        # whenever it catches a problem; our extra checks follow.
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                program = mil_load(spec, spec.specificationVersion, weights_dir)
        except Exception as e:
            raise CheckError(f"MIL loader rejected the program: {_first_line(e)}{_loader_site(e)}")
        opsets, n_ops = check_proto_structure(spec, weights_dir)
        result["opset"] = ",".join(opsets)
        result["ops"] = n_ops
        check_declared_types(spec, program)
        check_descriptions(spec, program)
        result["ok"] = True
    except CheckError as e:
        result["reason"] = str(e)
    except Exception as e:  # a bug in the oracle or an unexpected coremltools failure
        result["reason"] = f"oracle error: {_first_line(e)}{_loader_site(e)}"
    return result


def format_result(r):
    if r["ok"]:
        return f"ok {r['path']} (spec {r['spec_version']}, opset {r['opset']}, {r['ops']} ops)"
    return f"FAIL {r['path']}: {r['reason']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PKG_OR_DIR")
    ap.add_argument("--json", action="store_true", help="print a JSON list of results instead of lines")
    args = ap.parse_args(argv)

    pkgs, missing = find_packages(args.paths)
    results = [{"path": m, "ok": False, "reason": "no such file or directory"} for m in missing]
    results += [check_package(p) for p in pkgs]

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(format_result(r))
    sys.stdout.flush()
    if not pkgs and not missing:
        print(f"no .mlpackage found under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
