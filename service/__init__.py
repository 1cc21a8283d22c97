"""castream inference service: FastAPI + dynamic batching over ONNX Runtime.

Start it with ``python -m service`` or ``uvicorn service.app:create_app --factory``.
"""
