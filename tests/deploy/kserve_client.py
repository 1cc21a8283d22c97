"""KServe's own REST client against a castream server; run with the KServe SDK's venv (tests/deploy/kservetools.py).

``python kserve_client.py URL MODEL FOLDER``: FOLDER holds ``batch.npy`` (FP32 [N, 3, crop, crop]) and encoded images
``file-*``. The output arrays go to ``FOLDER/answers.npz``; the last line printed is a JSON report of the rest.
Server and model metadata have no client method: they are read as KServe's own data models validate them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse


async def infer(client, url, model, tensor, outputs, request_id):
    request = InferRequest(model, [tensor], request_id=request_id, request_outputs=outputs)
    response = await client.infer(url, request, model_name=model)
    return response, {output.name: output.as_numpy() for output in response.outputs}


def text(values: np.ndarray) -> list[list[str]]:
    """Classification strings, whichever way they came back (binary BYTES as bytes, JSON as str)."""
    return [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in values]


async def main(url: str, model: str, folder: Path) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    report: dict = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, model),
        "other_ready": await client.is_model_ready(url, "other"),
    }
    async with httpx.AsyncClient(timeout=60) as http:
        server = ServerMetadataResponse.model_validate((await http.get(f"{url}/v2")).json())
        metadata = ModelMetadataResponse.model_validate((await http.get(f"{url}/v2/models/{model}")).json())
    report["server"], report["model"] = server.model_dump(), metadata.model_dump()

    answers = {}
    batch = np.load(folder / "batch.npy")
    files = [path.read_bytes() for path in sorted(folder.glob("file-*"))]
    for binary in (True, False):
        kind = "binary" if binary else "json"
        tensor = InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        outputs = [RequestedOutput(name, {"binary_data": binary}) for name in ("logits", "class_maps")]
        response, arrays = await infer(client, url, model, tensor, outputs, f"fp32-{kind}")
        report[f"fp32-{kind}"] = {"id": response.id, "outputs": list(arrays)}
        answers.update({f"fp32-{kind}-{name}": array for name, array in arrays.items()})

        # Encoded images: raw bytes with the binary extension, base64 strings in JSON.
        values = files if binary else [base64.b64encode(data).decode() for data in files]
        tensor = InferInput("image_bytes", [len(files)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
        outputs = [
            RequestedOutput("logits", {"binary_data": binary, "classification": 2}),
            RequestedOutput("attention", {"binary_data": binary}),
        ]
        response, arrays = await infer(client, url, model, tensor, outputs, f"bytes-{kind}")
        report[f"bytes-{kind}"] = {"id": response.id, "outputs": list(arrays), "top": text(arrays["logits"])}
        answers[f"bytes-{kind}-attention"] = arrays["attention"]
    await client.close()
    np.savez(folder / "answers.npz", **answers)
    return report


if __name__ == "__main__":
    url, model, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, model, folder))))
