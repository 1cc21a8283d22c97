"""A Triton Python-backend model that runs ``<version>/model.onnx`` with ONNX Runtime on the CPU.

The tests copy it to ``<model>/<version>/model.py`` beside the ONNX file of a repository that ``export.triton``
wrote, whose configuration then names ``backend: "python"`` instead of the ONNX Runtime platform: the same tensors,
batcher, queue, labels and warm-up, run by Triton's Python backend where its ONNX Runtime backend is missing.
Triton's dynamic batcher hands ``execute`` every request of a batch; they run as one ``session.run``.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

THREADS = {"intra_op_thread_count": "intra_op_num_threads", "inter_op_thread_count": "inter_op_num_threads"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        for key, parameter in config.get("parameters", {}).items():
            if key in THREADS:  # the ONNX Runtime backend's thread parameters, honoured the same way
                setattr(options, THREADS[key], int(parameter["string_value"]))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests: list) -> list:
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs
        }
        sizes = [len(array) for array in arrays[self.inputs[0]]]
        results = self.session.run(self.outputs, {name: np.concatenate(parts) for name, parts in arrays.items()})
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
