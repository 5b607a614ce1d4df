"""Configuration: the server's options and each model's config, as frozen pydantic models."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kernels import ImageSteps
from serving.observe.drift import DriftSettings
from serving.protocol.datatypes import DATATYPES
from serving.protocol.limits import DEFAULT_LIMITS, InputLimits

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
assert set(Datatype.__args__) == set(DATATYPES)  # type: ignore[attr-defined]

Provider = Literal["tensorrt", "cuda", "cpu"]

DEFAULT_MAX_BATCH_SIZE = 64
"""``max_batch_size`` when the config leaves it out and every tensor's first dim is dynamic."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorConfig(_Frozen):
    """One input or output of a model."""

    name: str
    """The tensor's name in the ONNX graph."""
    datatype: Datatype
    """The v2 datatype (FP32, INT64, BYTES, ...)."""
    dims: tuple[int, ...]
    """The shape without the batch dimension when ``max_batch_size > 0``; -1 marks a free dim."""

    @model_validator(mode="after")
    def _dims_valid(self) -> TensorConfig:
        if any(d < -1 or d == 0 for d in self.dims):
            raise ValueError(f"dims of '{self.name}' must be positive or -1, got {list(self.dims)}")
        return self


class LatestPolicy(_Frozen):
    latest: PositiveInt
    """Serve the highest ``latest`` versions."""


class SpecificPolicy(_Frozen):
    specific: tuple[PositiveInt, ...] = Field(min_length=1)
    """Serve exactly these versions."""


VersionPolicy = Literal["all"] | LatestPolicy | SpecificPolicy


class DynamicBatching(_Frozen):
    """Server-side batching of concurrent requests (Triton's ``dynamic_batching``)."""

    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    """How long the oldest queued request may wait for others to join its batch. 0: never wait;
    batches still form from what queues while the previous batch runs."""
    preferred_batch_sizes: tuple[PositiveInt, ...] = ()
    """Batch sizes (rows) that go without waiting out the delay: as soon as the queue fills one,
    the largest it fills is sent (Triton's rule); the rest waits on."""
    max_queue_size: PositiveInt = 1024
    """Queued requests beyond which new ones are refused at once (503 / UNAVAILABLE)."""
    default_timeout_ms: float | None = Field(default=None, gt=0)
    """How long a request may wait in the queue before 504 / DEADLINE_EXCEEDED; a request's
    ``timeout`` parameter (microseconds, as tritonclient sends it) may lower it. None: no limit."""


class CudaOptions(_Frozen):
    """ONNX Runtime's CUDA provider, for one model."""

    device_id: NonNegativeInt = 0
    """Among the GPUs the replica sees (Ray gives each replica its own: 0)."""
    memory_limit_mb: PositiveInt | None = None
    """The provider's memory arena limit; None: as much as the GPU has."""
    conv_algo_search: Literal["exhaustive", "heuristic", "default"] = "exhaustive"
    """cuDNN's convolution algorithm search: exhaustive benchmarks once per shape (at
    warm-up for the batch sizes it sees), heuristic picks without timing."""
    graphs: bool = False
    """Replay executions from CUDA graphs, one captured per padded batch size at load (a
    model with fixed shapes but for the batch dim and no control flow; otherwise it runs
    without, and its config says why)."""


class TensorrtOptions(_Frozen):
    """ONNX Runtime's TensorRT provider, for one model."""

    fp16: bool = False
    """Build FP16 engines (faster; outputs differ from FP32 in the last digits)."""
    cache_dir: str | None = None
    """Where engines and timing caches go, in a folder per model sha256, TensorRT version, GPU
    and profile; None: ``$SERVING_CACHE_DIR/tensorrt``, else ``~/.cache/serving/tensorrt``."""


class ImagePreprocess(_Frozen):
    """Clients send ``uint8`` NHWC images for a graph input that takes normalized NCHW floats;
    the server converts them (``kernels.preprocess_images``: on the GPU, one fused kernel)."""

    input: str
    """The graph input it feeds: (N, C, h, w) FP32 or FP16."""
    mean: tuple[float, ...] = Field(min_length=1)
    """Per channel, in units of ``pixel * scale``."""
    std: tuple[float, ...] = Field(min_length=1)
    scale: float = Field(default=1 / 255, gt=0)
    resize: tuple[PositiveInt, PositiveInt] | None = None
    """(height, width) to resize to, bilinearly, before the crop; then any image size is taken."""
    crop: tuple[PositiveInt, PositiveInt] | None = None
    """(height, width) of the center crop; then any image at least this large is taken."""

    @model_validator(mode="after")
    def _one_per_channel(self) -> ImagePreprocess:
        ImageSteps(mean=self.mean, std=self.std)  # the kernel's own checks, at parse time
        return self


class Preprocess(_Frozen):
    image: ImagePreprocess


class SoftmaxTopK(_Frozen):
    """Adds outputs ``<output>_topk_indices`` (INT64) and ``<output>_topk_scores`` (FP32): the
    ``k`` most probable classes of a logits output, most probable first."""

    output: str
    k: PositiveInt = 5


class Postprocess(_Frozen):
    softmax_topk: SoftmaxTopK


class ModelConfig(_Frozen):
    """``REPO/MODEL/config.yaml``; the same fields are read from a Triton ``config.pbtxt``."""

    name: str | None = None
    """Must match the model's directory name when given."""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    """Only ONNX models are served."""
    max_batch_size: int | None = Field(default=None, ge=0)
    """Largest batch a request may carry; 0 means the model has no batch dimension. Left out:
    ``DEFAULT_MAX_BATCH_SIZE`` when every graph tensor has a dynamic first dim, else 0."""
    inputs: tuple[TensorConfig, ...] = ()
    """Inputs; any the graph has and this omits are read from the graph."""
    outputs: tuple[TensorConfig, ...] = ()
    """Outputs; any the graph has and this omits are read from the graph."""
    version_policy: VersionPolicy = LatestPolicy(latest=1)
    """Which version directories to serve: ``all``, ``{latest: N}`` or ``{specific: [..]}``."""
    instance_count: PositiveInt | None = None
    """How many inferences (or batches) of one version may run at once in a replica; each runs
    on ``replica_cpus / instance_count`` ONNX Runtime threads (at least one). Left out: 2 on a
    replica with 2 or more CPUs, else 1, as Triton defaults ONNX models on CPU (two
    single-threaded executions keep a 2-core replica busy while its event loop takes requests
    in; one two-threaded execution stalls whenever the loop takes a core)."""
    dynamic_batching: DynamicBatching | None = None
    """Batch concurrent requests together; off when left out. Needs ``max_batch_size > 0``."""
    execution_providers: tuple[Provider, ...] = ("tensorrt", "cuda", "cpu")
    """Preferred ONNX Runtime providers in order; those not available are skipped."""
    cuda: CudaOptions = CudaOptions()
    tensorrt: TensorrtOptions = TensorrtOptions()
    io_binding: bool | None = None
    """Bind inputs and outputs to the session's device (ONNX Runtime's IO binding), so that a
    batch crosses the bus once each way and inputs already on the GPU (preprocessed there) are
    not copied at all. None: on when the session runs on CUDA."""
    model_filename: str = "model.onnx"
    """The file inside each version directory."""

    @field_validator("model_filename")
    @classmethod
    def _inside_the_version_folder(cls, value: str) -> str:
        path = PurePosixPath(value)
        if (
            not value.strip()
            or path.is_absolute()
            or "\\" in value
            or value.startswith("~")
            or ".." in path.parts
        ):
            raise ValueError(
                f"'{value}' must name a file inside the version folder (a relative path "
                "without '..')"
            )
        return value

    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form metadata reported with the model, such as a git SHA or a data hash."""
    preprocess: Preprocess | None = None
    """Server-side input conversion (``uint8`` images to normalized floats)."""
    postprocess: Postprocess | None = None
    """Server-side outputs derived from the graph's (softmax + top-k)."""


ModelControlMode = Literal["none", "explicit", "poll"]

DEFAULT_INSTANCES = 2
"""Concurrent executions of a model whose config does not say, on a replica with at least as
many CPUs (Triton's default instance count for ONNX models on CPU)."""

MAX_CPUS_PER_REPLICA = 8
"""Machine-sized defaults give a replica at most this many CPUs, and a node one replica per this
many of its CPUs: past ~8, one replica's event loop (one Python thread) tops out before its
sessions' threads do on small models."""


class AutoscalingConfig(_Frozen):
    """Replicas follow the server's own load: requests in flight (queued or running) in each
    replica, as the replicas report them to Ray Serve's autoscaler (``control/autoscaling.py``).
    """

    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt
    target_in_flight: float = Field(default=8.0, gt=0)
    """Requests in flight per replica the autoscaler aims at: replicas = ceil(in flight in all
    of them / this)."""
    upscale_delay_s: float = Field(default=3.0, ge=0)
    """How long the load must ask for more replicas before one is added."""
    downscale_delay_s: float = Field(default=60.0, ge=0)
    """How long it must ask for fewer before one is removed (after draining)."""
    look_back_s: float = Field(default=3.0, gt=1.0)
    """The window over which each replica's reports are averaged."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class ServerConfig(_Frozen):
    """How the server runs: parsed once by the CLI and passed down."""

    repository: Path
    """The model repository directory (on every node of a cluster)."""
    host: str = "0.0.0.0"
    """Address the HTTP and gRPC servers bind."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """KServe v2 REST port, shared by the replicas of a node."""
    grpc_port: int | None = Field(default=8001, ge=0, le=65535)
    """KServe v2 gRPC port; None turns gRPC off."""
    replicas: PositiveInt | None = None
    """Server replicas; several on one node share the ports through SO_REUSEPORT. None: sized
    to the Ray cluster's CPUs (see ``MAX_CPUS_PER_REPLICA``)."""
    autoscaling: AutoscalingConfig | None = None
    """Replicas between a minimum and a maximum, following the load (instead of
    ``replicas``)."""
    replica_cpus: float | None = Field(default=None, gt=0)
    """CPUs Ray reserves for each replica; ONNX Runtime's thread counts follow it. None: sized
    to the Ray cluster's nodes."""
    replica_gpus: float | None = Field(default=None, ge=0)
    """GPUs Ray reserves for each replica (a fraction shares one GPU between replicas). None:
    one per replica where the cluster has GPUs, and then one replica per GPU unless
    ``replicas`` says otherwise; 0 where it has none."""
    replica_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each replica needs, to place replicas on the nodes that have them
    (a KubeRay worker group's ``rayStartParams.resources``)."""
    model_control_mode: ModelControlMode = "explicit"
    """Triton's model control modes. ``explicit``: the models named by ``load_models`` (every
    model when it is empty) load at start, and the model control API loads and unloads.
    ``none``: every model loads at start and the API refuses changes. ``poll``: every model
    loads at start and the repository is rescanned every ``repository_poll_s``."""
    load_models: tuple[str, ...] = ()
    """``explicit`` mode: the models to load at start; empty or ``*``: all of them."""
    repository_poll_s: float = Field(default=15.0, gt=0)
    """``poll`` mode: seconds between scans of the repository (Triton's default: 15)."""
    state_file: Path | None = None
    """Where the controller keeps the desired state between runs (besides Ray's GCS, which
    lasts only as long as the cluster); None: nowhere."""
    resume: bool = True
    """Start from the saved state (models loaded and unloaded through model control, config
    overrides) when it belongs to this repository."""
    metrics_port: int | None = Field(default=8002, ge=0, le=65535)
    """Prometheus ``/metrics`` port, shared by the replicas of a node (each answers for the
    node); None turns it off."""
    metrics_triton: bool = False
    """Also expose Triton's metric names (``nv_inference_request_success``, ...)."""
    run: str = ""
    """This server start's id (set when it deploys): names the node's metrics directory."""
    access_log: bool = False
    """Write a JSON line per inference request to the ``serving.access`` logger."""
    auth_file: Path | None = None
    """A tokens file (``security/auth.py`` gives its format) that each replica reads at start;
    with credentials configured, every call but health needs ``Authorization: Bearer``."""
    auth_tokens: tuple[str, ...] = ()
    """Credentials as tokens-file lines with ``sha256:<hex>`` digests (the CLI puts
    ``SERVING_TOKENS`` here, hashed)."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) that the HTTP and gRPC listeners present; with it, both speak
    only TLS. Needs ``tls_key_file``."""
    tls_key_file: Path | None = None
    """The certificate's PEM private key."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS)."""
    drift_sample_fraction: float = Field(default=0.1, ge=0, le=1)
    """Fraction of inference requests whose inputs and outputs are sampled for drift
    detection; 0 turns it off."""
    drift_window_rows: PositiveInt = 500
    """Sampled rows per drift window."""
    drift_alpha: float = Field(default=0.001, gt=0, lt=1)
    """Chance that a window of undrifted traffic raises the drift alarm (family-wise)."""
    drift_reference_rows: PositiveInt = 1000
    """Rows of the first requests that become the reference of a version without a
    ``profile.json``."""
    max_request_bytes: PositiveInt = 64 * 1024 * 1024
    """Largest HTTP request body accepted, after decompression (Triton's default: 64 MiB)."""
    max_tensor_elements: PositiveInt = DEFAULT_LIMITS.max_tensor_elements
    """Most elements one input tensor may declare."""
    max_request_elements: PositiveInt = DEFAULT_LIMITS.max_request_elements
    """Most elements a request's inputs may declare together."""
    max_object_elements: PositiveInt = DEFAULT_LIMITS.max_object_elements
    """Most JSON values and BYTES elements in one request (each decodes to a Python object of
    tens of bytes; large tensors belong in the binary extension)."""
    max_bytes_element: PositiveInt = DEFAULT_LIMITS.max_bytes_element
    """Largest BYTES element, in bytes."""
    grpc_max_message_bytes: PositiveInt = 128 * 1024 * 1024
    """Largest gRPC message either way; room for a 64 MiB tensor and its framing."""
    deregister_s: float = Field(default=1.0, ge=0, le=15)
    """How long a stopping replica keeps accepting connections while it answers not-ready
    (and ``Connection: close``), so that load balancers take it out first. Behind a
    Kubernetes Service: at least the readiness probe's period, plus a little."""
    inline_below_us: float = Field(default=100.0, ge=0)
    """Executions expected to take less than this (µs, from each version's running average) run
    on the event loop instead of a worker thread, whose hand-over costs about as much. 0: always
    use worker threads."""

    @model_validator(mode="after")
    def _one_way_to_count(self) -> ServerConfig:
        if self.autoscaling is not None and self.replicas is not None:
            raise ValueError("give replicas or autoscaling, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give tls_cert_file and tls_key_file together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    def input_limits(self) -> InputLimits:
        return InputLimits(
            max_tensor_elements=self.max_tensor_elements,
            max_request_elements=self.max_request_elements,
            max_object_elements=self.max_object_elements,
            max_bytes_element=self.max_bytes_element,
        )

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(
            sample_fraction=self.drift_sample_fraction,
            window_rows=self.drift_window_rows,
            alpha=self.drift_alpha,
            reference_rows=self.drift_reference_rows,
            min_window_rows=min(100, self.drift_window_rows),
        )

    @property
    def cpus(self) -> float:
        """The replica's CPUs: as configured, else the machine's."""
        return self.replica_cpus if self.replica_cpus is not None else float(os.cpu_count() or 1)

    def instances(self, model: ModelConfig) -> int:
        """A model's concurrent executions in this replica: its ``instance_count``, else the
        default for the replica's CPUs."""
        return model.instance_count or (DEFAULT_INSTANCES if self.cpus >= DEFAULT_INSTANCES else 1)

    def threads_per_instance(self, model: ModelConfig) -> int:
        """ONNX Runtime threads for each of a model's concurrent executions: the replica's CPUs
        shared among them, at least one."""
        return max(1, round(self.cpus / self.instances(model)))


def describe_errors(error: ValidationError, *, top: str = "(top)") -> str:
    """A validation error in one line, each problem with the key it is about (``top`` for
    the document as a whole)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or top}: {item['msg']}" for item in error.errors()
    )
