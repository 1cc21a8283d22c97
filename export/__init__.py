"""castream export: a training checkpoint becomes one verified ONNX model (see docs/onnx-model.md)."""
