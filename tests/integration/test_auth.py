"""Bearer tokens and TLS on a real server, through tritonclient (HTTP and gRPC), httpx and the
CLI: every outcome of authentication on both transports, TLS and mutual TLS round trips."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from serving.cli import app
from tests.integration.clients import outside_address
from tests.integration.conftest import Server, running_server

INFER = "infer-token-for-tests-0123456789"
ADMIN = "admin-token-for-tests-0123456789"
WRONG = "wrong-token-for-tests-0123456789"
ROW = np.ones((1, 16), dtype=np.float32)
README = Path(__file__).parents[2] / "README.md"


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def add_sub(module: Any) -> list[Any]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, list(ROW.shape), "FP32")
        tensor.set_data_from_numpy(ROW)
        inputs.append(tensor)
    return inputs


def client(protocol: str, server: Server, host: str = "127.0.0.1") -> Any:
    port = (server.http_url if protocol == "http" else server.grpc_url).rsplit(":", 1)[1]
    module = httpclient if protocol == "http" else grpcclient
    return module.InferenceServerClient(f"{host}:{port}")


def infer(protocol: str, server: Server, token: str | None) -> np.ndarray:
    module = httpclient if protocol == "http" else grpcclient
    result = client(protocol, server).infer("add_sub", add_sub(module), headers=bearer(token))
    return result.as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def refused(call: Any) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return f"{caught.value.status()} {caught.value.message()}"


@pytest.fixture(scope="module")
def auth_server(ray_serve: None, test_repository: Path, tmp_path_factory: Any) -> Iterator[Server]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# test credentials\ninfer {INFER} app\ninfer,admin {ADMIN} ops\n")
    with running_server("auth", test_repository, auth_file=tokens, host="0.0.0.0") as server:
        yield server


PROTOCOLS = ("http", "grpc")
UNAUTHENTICATED = {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}
DENIED = {"http": "403", "grpc": "StatusCode.PERMISSION_DENIED"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_stays_open(auth_server: Server, protocol: str) -> None:
    live = client(protocol, auth_server)
    assert live.is_server_live() and live.is_server_ready()
    assert live.is_model_ready("add_sub")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("token", [None, WRONG])
def test_no_or_unknown_token_is_unauthenticated(
    auth_server: Server, protocol: str, token: str | None
) -> None:
    answer = refused(lambda: infer(protocol, auth_server, token))
    assert answer.startswith(UNAUTHENTICATED[protocol])
    expected = "needs a credential" if token is None else "credential sent is not valid"
    assert expected in answer
    metadata = client(protocol, auth_server)
    answer = refused(lambda: metadata.get_model_metadata("add_sub", headers=bearer(token)))
    assert answer.startswith(UNAUTHENTICATED[protocol])
    answer = refused(lambda: metadata.load_model("add_sub", headers=bearer(token)))
    assert answer.startswith(UNAUTHENTICATED[protocol])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_infer_token_infers_but_may_not_control_models(
    auth_server: Server, protocol: str
) -> None:
    np.testing.assert_array_equal(infer(protocol, auth_server, INFER), ROW + ROW)
    calls = client(protocol, auth_server)
    assert calls.get_model_metadata("add_sub", headers=bearer(INFER))
    assert calls.get_model_repository_index(headers=bearer(INFER))
    answer = refused(lambda: calls.load_model("add_sub", headers=bearer(INFER)))
    assert answer.startswith(DENIED[protocol])
    assert "credential 'app' has no admin scope" in answer


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_admin_token_controls_models_from_another_host(
    auth_server: Server, protocol: str
) -> None:
    """With an admin credential configured, admin calls no longer need loopback."""
    host = outside_address()
    if host is None:
        pytest.skip("this machine has no address but loopback")
    admin = client(protocol, auth_server, host)
    admin.load_model("add_sub", headers=bearer(ADMIN))
    assert admin.is_model_ready("add_sub")
    np.testing.assert_array_equal(infer(protocol, auth_server, ADMIN), ROW + ROW)


def test_a_grpc_stream_needs_a_credential(auth_server: Server) -> None:
    channel = grpc.insecure_channel(auth_server.grpc_url)
    from serving.protocol.proto import grpc_service_pb2 as pb
    from serving.protocol.proto import grpc_service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    request = pb.ModelInferRequest(model_name="add_sub")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ModelStreamInfer(iter([request]), timeout=10))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_http_refusals_say_how_and_are_counted(auth_server: Server) -> None:
    base = f"http://{auth_server.http_url}"
    answer = httpx.get(f"{base}/v2/models/add_sub", timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in answer.json()["error"]
    answer = httpx.post(
        f"{base}/v2/models/add_sub/traffic", json={"weights": {"1": 100}},
        headers=bearer(INFER), timeout=10,
    )  # fmt: skip
    assert answer.status_code == 403
    metrics = httpx.get(f"http://{auth_server.metrics_url}/metrics", timeout=10).text
    counts = {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(
            r'serving_auth_failures_total\{protocol="(\w+)",reason="(\w+)"\} (\S+)', metrics
        )
    }
    assert counts[("http", "missing")] >= 1
    assert counts[("http", "scope")] >= 1


def test_the_cli_sends_the_credential(auth_server: Server, monkeypatch: Any) -> None:
    runner = CliRunner()
    url = auth_server.http_url
    monkeypatch.delenv("SERVING_TOKEN", raising=False)
    without = runner.invoke(app, ["traffic", "show", "add_sub", "--url", url, "--json"])
    assert without.exit_code == 1 and "401" in without.output
    monkeypatch.setenv("SERVING_TOKEN", INFER)
    shown = runner.invoke(app, ["traffic", "show", "add_sub", "--url", url, "--json"])
    assert shown.exit_code == 0, shown.output
    assert '"model"' in shown.output or '"weights"' in shown.output


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: Any) -> Path:
    """The README's openssl recipe, run as written."""
    text = README.read_text()
    recipe = text.split("<!-- tls-recipe -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    directory: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(["bash", "-ec", recipe], cwd=directory, check=True, capture_output=True)
    return directory


def tls_infer(protocol: str, server: Server, certs: Path, *, client_cert: bool) -> np.ndarray:
    if protocol == "http":
        options = {"ca_certs": str(certs / "ca.crt")}
        if client_cert:
            options |= {"certfile": str(certs / "client.crt"), "keyfile": str(certs / "client.key")}
        http = httpclient.InferenceServerClient(
            server.http_url.replace("127.0.0.1", "localhost"), ssl=True, ssl_options=options
        )
        return http.infer("add_sub", add_sub(httpclient)).as_numpy("OUTPUT0")  # type: ignore[no-any-return]
    extra = {}
    if client_cert:
        extra = {
            "private_key": str(certs / "client.key"),
            "certificate_chain": str(certs / "client.crt"),
        }
    secure = grpcclient.InferenceServerClient(
        server.grpc_url.replace("127.0.0.1", "localhost"),
        ssl=True,
        root_certificates=str(certs / "ca.crt"),
        **extra,
    )
    return secure.infer("add_sub", add_sub(grpcclient), client_timeout=20).as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def tls_options(certs: Path, **more: Path) -> dict[str, Path]:
    return {"tls_cert_file": certs / "server.crt", "tls_key_file": certs / "server.key", **more}


def test_tls_round_trips(ray_serve: None, test_repository: Path, certificates: Path) -> None:
    with running_server("tls", test_repository, **tls_options(certificates)) as server:
        for protocol in PROTOCOLS:
            result = tls_infer(protocol, server, certificates, client_cert=False)
            np.testing.assert_array_equal(result, ROW + ROW)
        ready = httpx.get(
            f"https://{server.http_url}/v2/health/ready",
            verify=__import__("ssl").create_default_context(cafile=str(certificates / "ca.crt")),
            timeout=10,
        )
        assert ready.json() == {"ready": True}
        with pytest.raises(httpx.HTTPError):  # plaintext is not spoken
            httpx.get(f"http://{server.http_url}/v2/health/live", timeout=5)


def test_mutual_tls_needs_a_client_certificate(
    ray_serve: None, test_repository: Path, certificates: Path
) -> None:
    options = tls_options(certificates, tls_client_ca_file=certificates / "ca.crt")
    with running_server("mtls", test_repository, **options) as server:
        for protocol in PROTOCOLS:
            result = tls_infer(protocol, server, certificates, client_cert=True)
            np.testing.assert_array_equal(result, ROW + ROW)
        with pytest.raises(InferenceServerException):
            tls_infer("grpc", server, certificates, client_cert=False)
        with pytest.raises(Exception):  # noqa: B017 - the handshake fails, as gevent raises it
            tls_infer("http", server, certificates, client_cert=False)
