"""Model runtimes: a small protocol (``base``) and its ONNX Runtime implementation."""
