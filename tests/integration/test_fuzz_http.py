"""The HTTP API fuzzed against a running server: schemathesis generates calls from the v2
OpenAPI spec (tests/specs, as KServe publishes it), hypothesis near-valid inference bodies for
the models the server has; no call gets a 5xx, and the replica neither crashes nor stops
answering."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import httpx
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

from tests.integration.conftest import Server
from tests.strategies import near_requests

SPEC = Path(__file__).parents[1] / "specs" / "kserve_v2_rest.yaml"
MODELS = ["add_sub", "identity_fp32", "identity_bytes", "digits", "corrupt", "no_such_model"]
"""Names the generated paths use half the time (else whatever schemathesis makes up): real
models, so that bodies reach the decoders, one that failed to load, one that does not exist."""
VERSIONS = ["1", "2", "0", "01", "99999999999999999999", "-1", "²"]
EXAMPLES = int(os.environ.get("SERVING_FUZZ_EXAMPLES", "250"))
"""Calls per test; raise it for a longer run (CI runs the default)."""
CALLS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def spec_schema() -> Any:
    document = yaml.safe_load(SPEC.read_text())
    # KServe writes path templates as ${NAME}; OpenAPI's are {NAME}.
    document["paths"] = {k.replace("${", "{"): v for k, v in document["paths"].items()}
    return schemathesis.openapi.from_dict(document)


def replica_pid(server: Server) -> int:
    handle = serve.get_app_handle(server.app)
    return int(handle.endpoints.remote().result(timeout_s=30)["pid"])


def still_serving(server: Server, pid: int) -> None:
    assert replica_pid(server) == pid, "the replica was replaced: it crashed or stopped"
    ready = httpx.get(f"http://{server.http_url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200
    answer = httpx.post(
        f"http://{server.http_url}/v2/models/identity_fp32/infer",
        json={"inputs": [{"name": "INPUT", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_calls_generated_from_the_v2_spec_get_no_server_error(server: Server) -> None:
    schema = spec_schema()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6  # every operation the spec has
    cases = st.one_of([operation.as_strategy() for operation in operations])
    pid = replica_pid(server)
    statuses: collections.Counter[int] = collections.Counter()

    @CALLS
    @given(case=cases, name=st.sampled_from(MODELS), version=st.sampled_from(VERSIONS),
           pin=st.booleans())  # fmt: skip
    def call(case: Any, name: str, version: str, pin: bool) -> None:
        if pin and case.path_parameters:
            case.path_parameters = {"MODEL_NAME": name, "MODEL_VERSION": version}
        response = case.call(base_url=f"http://{server.http_url}")
        statuses[response.status_code] += 1
        assert response.status_code < 500 or response.status_code == 503, (
            f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
        )
        if response.status_code == 503:  # only the model that failed to load is unavailable
            not_ready = '"ready":false' in response.text or "is not ready" in response.text
            assert not_ready and "corrupt" in response.text, response.text

    call()
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[404] > 0, statuses
    still_serving(server, pid)


def test_near_valid_inference_bodies_get_no_server_error(server: Server) -> None:
    """Bodies shaped like v2 requests, with any value where each field goes, sent as JSON and
    as the binary extension to models that exist."""
    pid = replica_pid(server)
    statuses: collections.Counter[int] = collections.Counter()
    inputs = st.sampled_from(["INPUT", "INPUT0", "INPUT1", "input"])
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:

        @CALLS
        @given(body=near_requests(inputs), model=st.sampled_from(MODELS[:4]), binary=st.booleans())
        def call(body: bytes, model: str, binary: bool) -> None:
            headers = (
                {"Inference-Header-Content-Length": str(body.rfind(b"}") + 1)} if binary else {}
            )
            response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, f"{response.status_code} {response.text[:300]}"

        call()
    assert statuses[400] > 0, statuses
    still_serving(server, pid)
