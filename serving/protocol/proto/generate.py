"""Regenerate the checked-in protobuf modules: ``python -m serving.protocol.proto.generate``.

Needs ``grpcio-tools`` (the ``dev`` extra). Imports are rooted at the repository so the generated
modules live under ``serving.protocol.proto`` and unpickle in Ray workers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    here = Path(__file__).resolve().parent
    root = here.parents[2]
    protos = sorted(str(p.relative_to(root)) for p in here.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *protos,
    ]
    status = int(protoc.main(args))
    if status == 0:
        for module in here.glob("*_pb2.py"):
            _use_private_pool(module)
        for stubs in here.glob("*_pb2_grpc.py"):
            if "class " not in stubs.read_text():
                stubs.unlink()  # a .proto without services
    return status


def _use_private_pool(module: Path) -> None:
    """Register the generated descriptors in ``_pool.POOL`` rather than the default pool.

    Also drops the gencode's exact runtime-version gate: the descriptors it builds work on any
    protobuf runtime the package allows (pyproject pins the lower bound).
    """
    text = module.read_text()
    text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)
    text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from serving.protocol.proto._pool import POOL as _POOL\n",
    ).replace("_descriptor_pool.Default()", "_POOL")
    module.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
