"""Poll mode on a live replica: a version that appears on disk is served, model control is off."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving.control import cluster
from serving.errors import ErrorCode
from tests.integration.clients import In, V2Client, error_code
from tests.integration.conftest import start_server

ROW = np.ones((1, 16), dtype=np.float32)


def test_poll_mode_serves_a_version_that_appears_on_disk(
    ray_serve: None, demo_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repository / "add_sub", repo / "add_sub")
    server, held = start_server(
        "poll", repo, replicas=1, model_control_mode="poll", repository_poll_s=0.5
    )
    try:
        client = V2Client("grpc", server.http_url, server.grpc_url)
        assert client.model_metadata("add_sub")["versions"] == ["1"]
        # A version directory appears whole (built beside it, then renamed), as a deploy would.
        staging = repo / "add_sub" / ".staging"
        shutil.copytree(repo / "add_sub" / "1", staging)
        staging.rename(repo / "add_sub" / "2")
        deadline = time.monotonic() + 30
        while client.model_metadata("add_sub")["versions"] != ["2"]:
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.2)
        result = client.infer("add_sub", [In("INPUT0", ROW, "FP32"), In("INPUT1", ROW, "FP32")])
        assert result.model_version == "2"
        np.testing.assert_array_equal(result.outputs["OUTPUT0"], ROW * 2)
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("add_sub")
        assert error_code(refused.value) is ErrorCode.UNAVAILABLE
        assert "not allowed in model control mode 'poll'" in refused.value.message()
    finally:
        cluster.delete(server.app)
        for sock in held:
            sock.close()
