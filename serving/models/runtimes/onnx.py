"""ONNX Runtime sessions: providers with fallback, thread settings, string tensors."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from kernels._backend import GPU_EXTRA, on_device
from serving.config import DEFAULT_MAX_BATCH_SIZE, CudaOptions, ModelConfig, TensorrtOptions
from serving.errors import InvalidInputError
from serving.models.runtimes.base import GraphTensor, ModelFile
from serving.models.runtimes.graphs import GraphRunner, batch_sizes, control_flow, unfit_tensor
from serving.protocol.datatypes import from_ort

logger = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class SessionOptions:
    intra_op_threads: int = 1
    """Threads inside one operator: the replica's CPU allotment."""
    allow_spinning: bool = False
    """ORT's spin-wait burns most of a core while idle; off unless asked for."""


NEEDS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("libnvinfer.so.10", "libnvinfer.so"),
    "cuda": ("libcuda.so.1",),
}
"""Shared libraries a provider cannot run without (TensorRT's; the NVIDIA driver's), looked
for before ONNX Runtime is asked: it would print a page of errors for each model and fall back
anyway."""


@functools.cache
def missing_library(name: str) -> str | None:
    """The library ``name``'s provider needs and this machine lacks, or None."""
    for library in NEEDS.get(name, ()):
        try:
            ctypes.CDLL(library)
        except OSError:
            continue
        return None
    return NEEDS[name][0] if name in NEEDS else None


@functools.cache
def _preload_cuda_libraries() -> None:
    """The CUDA and cuDNN libraries of NVIDIA's wheels (the gpu extra), which are not on the
    loader's path, loaded once before a CUDA session (onnxruntime-gpu 1.21 and later)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as error:  # the system's own CUDA may still serve
            logger.info("could not preload CUDA libraries from NVIDIA's wheels: %s", error)


def choose_providers(preferred: tuple[str, ...]) -> list[str]:
    """The preferred providers that this onnxruntime build has and this machine can run, CPU
    always last."""
    available = set(ort.get_available_providers())
    chosen = [
        PROVIDERS[p] for p in preferred if PROVIDERS[p] in available and missing_library(p) is None
    ]
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])
    if chosen[0] != PROVIDERS["cpu"]:
        _preload_cuda_libraries()
    return chosen


@dataclass(frozen=True)
class GpuSettings:
    """What the GPU providers are told, from the model's config."""

    cuda: CudaOptions = field(default_factory=CudaOptions)
    tensorrt: TensorrtOptions = field(default_factory=TensorrtOptions)
    io_binding: bool | None = None
    graphs: bool = False
    """CUDA graphs asked for (a graph with control flow turns them off: ``graphs.control_flow``)."""
    max_batch_size: int | None = None
    """The config's; None: the default when the graph batches."""
    batch_sizes: tuple[int, ...] = ()
    """The batch sizes the scheduler forms most (preferred sizes): TensorRT optimizes for the
    largest."""

    @classmethod
    def of(cls, config: ModelConfig) -> GpuSettings:
        batching = config.dynamic_batching
        preferred = batching.preferred_batch_sizes if batching is not None else ()
        return cls(config.cuda, config.tensorrt, config.io_binding, config.cuda.graphs,
                   config.max_batch_size, tuple(preferred))  # fmt: skip


def cache_root(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    base = os.environ.get("SERVING_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "serving") / "tensorrt"


def provider_options(
    chosen: list[str], settings: GpuSettings, source: ModelFile
) -> list[tuple[str, dict[str, str]]]:
    """``chosen`` with the options each is given: the CUDA provider's device, arena limit and
    cuDNN search; TensorRT's precision, its engine and timing caches in a folder keyed by the
    model's sha256, TensorRT's version, the GPU and the optimization profile, and explicit
    profiles over the batch sizes (1, the largest preferred, the maximum) where the inputs'
    other dims are fixed."""
    result: list[tuple[str, dict[str, str]]] = []
    cuda = settings.cuda
    for provider in chosen:
        options: dict[str, str] = {}
        if provider in (PROVIDERS["cuda"], PROVIDERS["tensorrt"]):
            options["device_id"] = str(cuda.device_id)
        if provider == PROVIDERS["cuda"]:
            options["cudnn_conv_algo_search"] = cuda.conv_algo_search.upper()
            if settings.graphs:
                options["enable_cuda_graph"] = "1"
            if cuda.memory_limit_mb is not None:
                options["gpu_mem_limit"] = str(cuda.memory_limit_mb * 1024 * 1024)
        elif provider == PROVIDERS["tensorrt"]:
            profile = _profile(settings, source)
            key = "-".join([source.sha256[:16], f"trt{_tensorrt_version()}",
                            _gpu_name(cuda.device_id),
                            hashlib.sha256(repr(profile).encode()).hexdigest()[:8]])  # fmt: skip
            folder = cache_root(settings.tensorrt.cache_dir) / key
            options.update({
                "trt_fp16_enable": str(settings.tensorrt.fp16),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(folder),
                **profile,
            })  # fmt: skip
        result.append((provider, options))
    return result


def _profile(settings: GpuSettings, source: ModelFile) -> dict[str, str]:
    if source.proto is None:
        return {}
    graph = source.proto.graph
    initializers = {i.name for i in graph.initializer}
    shapes: dict[str, list[int]] = {}
    for tensor in graph.input:
        if tensor.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1
                for d in tensor.type.tensor_type.shape.dim]  # fmt: skip
        if not dims or dims[0] != -1 or -1 in dims[1:]:
            return {}  # no batch dim, or other free dims: TensorRT builds from what it sees
        shapes[tensor.name] = dims[1:]
    largest = settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    optimal = max(settings.batch_sizes, default=largest)

    def spec(batch: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, [batch, *dims]))}"
                        for name, dims in shapes.items())  # fmt: skip

    if not shapes:
        return {}
    return {
        "trt_profile_min_shapes": spec(1),
        "trt_profile_opt_shapes": spec(min(optimal, largest)),
        "trt_profile_max_shapes": spec(largest),
    }


@functools.cache
def _tensorrt_version() -> str:
    try:
        library = ctypes.CDLL(NEEDS["tensorrt"][0])
        number = int(library.getInferLibVersion())
    except (OSError, AttributeError):
        return "unknown"
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


@functools.cache
def _gpu_name(device: int) -> str:
    try:
        cp = importlib.import_module("cupy")
        name = cp.cuda.runtime.getDeviceProperties(device)["name"]
        text = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return f"gpu{device}"
    return "".join(c if c.isalnum() else "_" for c in text)


EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
"""Where ONNX Runtime reads external data from for a model loaded from bytes."""


def uses_external_data(source: ModelFile) -> bool:
    """Whether the model keeps tensors in external files; ValueError when any of them would be
    read from outside ``source.root`` (an absolute location, ``..``, a symlink leading out),
    whatever the installed ONNX Runtime would check itself."""
    if b"location" not in source.data:  # every external tensor names its location
        return False
    proto = source.proto
    if proto is None:  # let ONNX Runtime say what is wrong with the file
        return False
    from onnx import TensorProto

    root = source.root.resolve()
    found = False
    for tensor in _tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        found = True
        fields = {entry.key: entry.value for entry in tensor.external_data}
        location = fields.get("location", "")
        target = (source.path.parent / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise ValueError(
                f"tensor '{tensor.name}' keeps its data at '{location}', outside the model "
                "file's folder; external data must be inside it"
            )
    return found


def _tensors(proto: Any) -> Iterator[Any]:
    """Every tensor of a model: initializers, sparse ones, constants in node attributes, in
    subgraphs and in functions."""
    graphs = [proto.graph]
    nodes = [node for function in proto.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def fallback_reason(preferred: tuple[str, ...], running: list[str]) -> str | None:
    """Why a session runs on ``running`` when ``preferred`` came first, or None: each provider
    asked for before the one it got, and why it is not there."""
    available = set(ort.get_available_providers())
    missed = []
    unbuilt = False
    for name in preferred:
        provider = PROVIDERS[name]
        if running and provider == running[0]:
            break
        if provider not in available:
            unbuilt = True
            missed.append(f"{name} is not in this onnxruntime build")
        elif (library := missing_library(name)) is not None:
            missed.append(f"{name} needs {library}, which this machine does not have")
        else:
            missed.append(f"{name} could not start (no usable device; see the log)")
    if not missed:
        return None
    where = running[0].removesuffix("ExecutionProvider") if running else "nothing"
    hint = f" ({GPU_EXTRA})" if unbuilt else ""  # once, however many providers it concerns
    return "; ".join(missed) + f": serving on {where}{hint}"


def _shape(raw: object) -> tuple[int, ...]:
    dims = raw if isinstance(raw, list) else []
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)


class ONNXRuntime:
    """One ONNX Runtime inference session."""

    def __init__(
        self,
        model: ModelFile | Path,
        *,
        providers: tuple[str, ...],
        options: SessionOptions,
        gpu: GpuSettings | None = None,
    ) -> None:
        source = model if isinstance(model, ModelFile) else ModelFile.read(model)
        path = source.path
        so = ort.SessionOptions()
        if uses_external_data(source):
            # Read by ONNX Runtime from beside the file; the locations are checked above.
            so.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(path.parent))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = 1
        spin = "1" if options.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        settings = gpu or GpuSettings()
        wanted = choose_providers(providers)
        self.cuda_graphs: str | None = None
        """With CUDA graphs asked for: "on", or why not."""
        if settings.graphs and source.proto is not None:
            reason = control_flow(source.proto)
            if reason is not None:  # never ask the provider for what cannot work
                self.cuda_graphs = f"off: {reason}"
                settings = dataclasses.replace(settings, graphs=False)
        # The bytes that were read (and hashed), not the file again: it may have changed since.
        configured = provider_options(wanted, settings, source)
        self._session = ort.InferenceSession(source.data, sess_options=so, providers=configured)
        self._providers = list(self._session.get_providers())
        self.fallback = fallback_reason(providers, self._providers)
        """Why the session runs on other providers than the first asked for; None if it
        does not."""
        logger.info("loaded %s on %s%s", path.name, ", ".join(self._providers),
                    f" ({self.fallback})" if self.fallback else "")  # fmt: skip
        self._inputs = [
            GraphTensor(i.name, from_ort(i.type), _shape(i.shape))
            for i in self._session.get_inputs()
        ]
        self._outputs = [
            GraphTensor(o.name, from_ort(o.type), _shape(o.shape))
            for o in self._session.get_outputs()
        ]
        self._strings = {t.name for t in self._inputs if t.datatype == "BYTES"}
        on_cuda = self._providers[0] in (PROVIDERS["cuda"], PROVIDERS["tensorrt"])
        self.device = ("cuda", settings.cuda.device_id) if on_cuda else ("cpu", 0)
        """Where the session's tensors live: (ONNX Runtime device type, device id)."""
        wanted_binding = settings.io_binding
        strings = self._strings or any(t.datatype == "BYTES" for t in self._outputs)
        self.io_binding = (on_cuda if wanted_binding is None else wanted_binding) and not strings
        """Whether executions bind their tensors (string tensors cannot be bound)."""
        self._graphs: GraphRunner | None = None
        if settings.graphs:
            self.cuda_graphs = self._start_graphs(settings, on_cuda)

    def _start_graphs(self, settings: GpuSettings, on_cuda: bool) -> str:
        reason = unfit_tensor(self._inputs + self._outputs)
        if reason is None and not on_cuda:
            reason = f"the session runs on {self._providers[0].removesuffix('ExecutionProvider')}"
        if reason is not None:
            off = f"off: {reason}"
            logger.warning("CUDA graphs %s", off)
            return off
        largest = settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self._graphs = GraphRunner(self._session, self._inputs, self._outputs, self.device,
                                   batch_sizes(largest, settings.batch_sizes))  # fmt: skip
        self._graphs.capture_all()
        return f"on: captured for batch sizes {', '.join(map(str, self._graphs.sizes))}"

    @property
    def inputs(self) -> list[GraphTensor]:
        return self._inputs

    @property
    def outputs(self) -> list[GraphTensor]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        return self._providers

    def infer(self, inputs: dict[str, Any], outputs: list[str]) -> list[np.ndarray]:
        if self._graphs is not None:
            return self._graphs.run(inputs, outputs)
        if self.io_binding:
            return self._bound(inputs, outputs)
        feed = {
            name: _as_text(name, array) if name in self._strings else array
            for name, array in inputs.items()
        }
        result = self._session.run(outputs, feed)
        return [np.asarray(r) for r in result]

    def _bound(self, inputs: dict[str, Any], outputs: list[str]) -> list[np.ndarray]:
        """One execution over IO binding: host inputs copied to the device once, device inputs
        (CuPy arrays, by DLPack's pointer) not at all, outputs allocated on the device by ONNX
        Runtime and copied back once."""
        device, index = self.device
        binding = self._session.io_binding()
        for name, array in inputs.items():
            if on_device(array):
                binding.bind_input(name, "cuda", array.device.id, array.dtype.type,
                                   list(array.shape), array.data.ptr)  # fmt: skip
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in outputs:
            binding.bind_output(name, device, index)
        self._session.run_with_iobinding(binding)
        return [np.asarray(r) for r in binding.copy_outputs_to_cpu()]

    def close(self) -> None:
        del self._session


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX string tensors take UTF-8 text only: decode BYTES, or say which element is not text."""
    flat = array.reshape(-1)
    text = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                text[index] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(
                    f"input '{name}': element {index} is not valid UTF-8; this model takes "
                    "ONNX string tensors, which hold UTF-8 text only"
                ) from None
        else:
            text[index] = str(item)
    return text.reshape(array.shape)


def open_offline(path: Path | ModelFile, config: ModelConfig) -> ONNXRuntime:
    """A session with default options, for work outside a server (validating, profiling,
    scoring a version on its evaluation set)."""
    return ONNXRuntime(path, providers=config.execution_providers, options=SessionOptions(),
                       gpu=GpuSettings.of(config))  # fmt: skip
