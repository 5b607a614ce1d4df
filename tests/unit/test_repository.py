"""Repository scanning, version policies and config parsing (YAML and Triton pbtxt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import LatestPolicy, ModelConfig, ServerConfig, SpecificPolicy
from serving.models.repository import load_config, parse_pbtxt, scan


def make_model(repo: Path, name: str, versions: list[int], config: str | None = None) -> None:
    for version in versions:
        (repo / name / str(version)).mkdir(parents=True)
        (repo / name / str(version) / "model.onnx").write_bytes(b"")
    if config is not None:
        (repo / name / "config.yaml").write_text(config)


def test_default_policy_serves_the_latest_version(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [1, 2, 10])
    (source,) = scan(tmp_path)
    assert [v.version for v in source.versions] == [10]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("all", [1, 2, 10]), ("{latest: 2}", [2, 10]), ("{specific: [1, 10]}", [1, 10])],
)
def test_version_policies(tmp_path: Path, policy: str, expected: list[int]) -> None:
    make_model(tmp_path, "m", [1, 2, 10], f"version_policy: {policy}\n")
    (source,) = scan(tmp_path)
    assert [v.version for v in source.versions] == expected


def test_hidden_entries_and_files_are_ignored(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [1])
    (tmp_path / ".git").mkdir()
    (tmp_path / "README").write_text("hi")
    (tmp_path / "m" / "notes").mkdir()
    assert [s.name for s in scan(tmp_path)] == ["m"]


def test_invalid_yaml_config_is_reported_not_raised(tmp_path: Path) -> None:
    make_model(tmp_path, "bad", [1], "max_batch_size: [oops\n")
    make_model(tmp_path, "good", [1])
    bad, good = scan(tmp_path)
    assert bad.error is not None and "not valid YAML" in bad.error
    assert good.error is None


def test_unknown_config_field_is_refused(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [1], "max_batch_sise: 4\n")
    (source,) = scan(tmp_path)
    assert source.error is not None and "max_batch_sise" in source.error


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("model_filename: /etc/passwd\n", "'/etc/passwd' must name a file inside"),
        ("model_filename: ../../other/1/model.onnx\n", "without '..'"),
        ("model_filename: sub/../../x.onnx\n", "without '..'"),
        ("model_filename: '~/x.onnx'\n", "must name a file inside"),
    ],
)
def test_a_model_file_outside_its_version_folder_makes_only_that_model_unavailable(
    tmp_path: Path, config: str, named: str
) -> None:
    make_model(tmp_path, "bad", [1], config)
    make_model(tmp_path, "good", [1])
    bad, good = scan(tmp_path)  # nothing raises out of the scan
    assert bad.error is not None and named in bad.error, bad.error
    assert good.error is None and [v.version for v in good.versions] == [1]


def test_tritons_default_model_filename_is_held_to_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "t" / "1").mkdir(parents=True)
    (tmp_path / "t" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\ndefault_model_filename: "/etc/passwd"\n'
    )
    (source,) = scan(tmp_path)
    assert source.error is not None and "'/etc/passwd' must name a file inside" in source.error


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_model(outside, "m", [1])
    repo = tmp_path / "repo"
    make_model(repo, "good", [1])
    (repo / "linked").symlink_to(outside / "m")  # a whole model folder
    (repo / "version").mkdir()
    (repo / "version" / "1").symlink_to(outside / "m" / "1")  # one version folder
    (repo / "inside").mkdir()
    (repo / "inside" / "1").symlink_to(repo / "good" / "1")  # another model's: also refused
    good, inside, linked, version = scan(repo)
    assert good.error is None
    assert linked.error is not None and "leads out of the repository" in linked.error
    assert version.error is not None and "leads out of the model's folder" in version.error
    assert inside.error is not None and "leads out of the model's folder" in inside.error


def test_config_name_must_match_directory(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [1], "name: other\n")
    (source,) = scan(tmp_path)
    assert source.error == "config name 'other' does not match directory 'm'"


def test_model_without_versions(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (source,) = scan(tmp_path)
    assert source.error == "no version directories found"


def test_missing_repository_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        scan(tmp_path / "nope")


PBTXT = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { specific: { versions: [1, 3] } }
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] label_filename: "labels.txt" } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
parameters { key: "git_sha" value: { string_value: "deadbeef" } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { zero_data: true } } } ]
"""


def test_triton_pbtxt_fields_are_read(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(PBTXT)
    config = load_config(tmp_path)
    assert config.name == "resnet"
    assert config.max_batch_size == 16
    assert config.version_policy == SpecificPolicy(specific=(1, 3))
    assert config.inputs[0].dims == (3, 224, 224)
    assert config.outputs[0].datatype == "BYTES"
    assert config.instance_count == 2
    assert config.labels == {"git_sha": "deadbeef"}
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_sizes == (4, 8)
    assert config.dynamic_batching.max_queue_delay_ms == 0.1
    assert config.dynamic_batching.max_queue_size == 1024


def test_pbtxt_queue_policy() -> None:
    document = parse_pbtxt(
        "max_batch_size: 8 dynamic_batching { default_queue_policy "
        "{ max_queue_size: 5 default_timeout_microseconds: 2500 } }"
    )
    assert document["dynamic_batching"] == {
        "max_queue_delay_ms": 0.0,
        "preferred_batch_sizes": [],
        "max_queue_size": 5,
        "default_timeout_ms": 2.5,
    }


def test_pbtxt_latest_policy_and_defaults() -> None:
    document = parse_pbtxt("version_policy: { latest: { num_versions: 2 } }")
    assert document["version_policy"] == {"latest": 2}
    assert document["max_batch_size"] == 0
    assert LatestPolicy(latest=2).latest == 2


def test_pbtxt_for_another_platform_is_refused() -> None:
    with pytest.raises(ValueError, match="only ONNX models are served"):
        parse_pbtxt('platform: "tensorrt_plan"')


def test_pbtxt_syntax_error_names_the_file() -> None:
    with pytest.raises(ValueError, match=r"config\.pbtxt"):
        parse_pbtxt("max_batch_size: {")


@pytest.mark.parametrize(
    ("replica_cpus", "instances", "threads"),
    [(2.0, 1, 2), (2.0, 2, 1), (4.0, 2, 2), (1.0, 4, 1), (8.0, 3, 3)],
)
def test_each_instance_gets_its_share_of_the_replica_cpus(
    replica_cpus: float, instances: int, threads: int
) -> None:
    server = ServerConfig(repository=Path("."), replica_cpus=replica_cpus)
    assert server.threads_per_instance(ModelConfig(instance_count=instances)) == threads


@pytest.mark.parametrize(
    ("replica_cpus", "instances", "threads"),
    [(1.0, 1, 1), (1.5, 1, 2), (2.0, 2, 1), (8.0, 2, 4)],
)
def test_a_model_that_does_not_say_gets_triton_cpu_default_of_two_instances(
    replica_cpus: float, instances: int, threads: int
) -> None:
    server = ServerConfig(repository=Path("."), replica_cpus=replica_cpus)
    assert server.instances(ModelConfig()) == instances
    assert server.threads_per_instance(ModelConfig()) == threads


def test_version_folders_take_ascii_digits_only(tmp_path: Path) -> None:
    """'²' and '٣' pass str.isdigit(); they are no versions (skipped, never raised), and the
    model's real versions serve on."""
    make_model(tmp_path, "m", [1, 2])
    for name in ("²", "٣", "01", "0", "9" * 30):
        (tmp_path / "m" / name).mkdir()
        (tmp_path / "m" / name / "model.onnx").write_bytes(b"")
    (source,) = scan(tmp_path)
    assert source.error is None and [v.version for v in source.versions] == [2]


def test_a_version_listed_twice_is_served_once(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [1, 3], "version_policy: {specific: [3, 1, 3, 3]}\n")
    (source,) = scan(tmp_path)
    assert [v.version for v in source.versions] == [1, 3]
