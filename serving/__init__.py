"""A KServe v2 / Triton-compatible ONNX model server on Ray Serve."""

from serving.config import ModelConfig, ServerConfig
from serving.errors import ErrorCode, ServingError
from serving.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

__version__ = "0.1.0"

__all__ = [
    "ErrorCode",
    "InferenceRequest",
    "InferenceResponse",
    "ModelConfig",
    "RequestedOutput",
    "ServerConfig",
    "ServingError",
    "Tensor",
    "__version__",
]
