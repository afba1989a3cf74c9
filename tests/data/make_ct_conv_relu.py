"""Generates tests/data/ct_conv_relu.mlpackage, the coremltools-written reference package.

Run by hand, never by the build or tests (mlc needs no Python):

    pip install coremltools==9.0 numpy
    python tests/data/make_ct_conv_relu.py

The output is committed so that tests can check mlc's protobuf types and package reader against a
package Apple's own tooling produced. Manifest item identifiers are random UUIDs, so regenerating
changes Manifest.json even though the model and weights stay the same.
"""

import os
import shutil

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "ct_conv_relu.mlpackage")

# Fixed seed so the committed weights are reproducible.
WEIGHT = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)


@mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))], opset_version=ct.target.iOS16)
def prog(x):
    y = mb.conv(x=x, weight=WEIGHT, pad_type="custom", pad=[1, 1, 1, 1], name="conv")
    return mb.relu(x=y, name="out")


model = ct.convert(
    prog,
    convert_to="mlprogram",
    minimum_deployment_target=ct.target.iOS16,
    compute_precision=ct.precision.FLOAT16,
)
if os.path.exists(OUT):
    shutil.rmtree(OUT)
model.save(OUT)
print(model._mil_program)
