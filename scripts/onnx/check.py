"""Checks an ONNX model exported by the resnext crate and runs it where users deploy.

    python3 scripts/onnx/check.py MODEL.onnx INPUT.f32 N H W OUT_DIR

(with the PYTHONPATH that scripts/setup-onnx-deps.sh prints). INPUT.f32 holds N images
[N, 3, H, W] as raw little-endian float32. This script:

* runs onnx.checker.check_model(MODEL, full_check=True) (with shape inference);
* runs the model in ONNX Runtime (CPUExecutionProvider) on the whole batch and on its first
  image alone (the dynamic batch axis), writing OUT_DIR/onnxruntime.f32 and
  OUT_DIR/onnxruntime-1.f32 (logits, raw float32);
* does the same in OpenVINO (CPU, inference precision f32) into OUT_DIR/openvino*.f32, or, when
  OpenVINO does not import, prints a `SKIPPED openvino: ...` line and goes on;
* prints one JSON line: the metadata_props, the graph's input and output names and shapes, and
  the engines that ran.

It compares nothing itself: the caller compares the logits with its own.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def shape_of(value):
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def run_onnxruntime(path, batches):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in batches]


def run_openvino(path, batches):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [compiled(x)[compiled.output(0)] for x in batches]


def main():
    path, data, n, h, w, out_dir = sys.argv[1:7]
    n, h, w = int(n), int(h), int(w)
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    images = np.fromfile(data, dtype="<f4").reshape(n, 3, h, w)
    batches = [images, np.ascontiguousarray(images[:1])]
    engines = {"onnxruntime": run_onnxruntime}
    try:
        import openvino  # noqa: F401

        engines["openvino"] = run_openvino
    except ImportError as e:
        print(f"SKIPPED openvino: it does not import ({e})", file=sys.stderr)
    for engine, run in engines.items():
        full, single = run(path, batches)
        full.astype("<f4").tofile(os.path.join(out_dir, f"{engine}.f32"))
        single.astype("<f4").tofile(os.path.join(out_dir, f"{engine}-1.f32"))
    report = {
        "metadata": {p.key: p.value for p in model.metadata_props},
        "opset": [[o.domain, o.version] for o in model.opset_import],
        "inputs": [[v.name, shape_of(v)] for v in model.graph.input],
        "outputs": [[v.name, shape_of(v)] for v in model.graph.output],
        "engines": list(engines),
        "ops": sorted({node.op_type for node in model.graph.node}),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
