"""The registry file: the issue's YAML shape, TOML, and every mistake named where it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from inference.engine.registry import RegistryConfigError, registry_config_load, registry_config_parse

ROOT = Path(__file__).resolve().parents[2]

ISSUE_SHAPE = """
models:
  - name: fast                      # what clients send as `model`
    context_length: 4096
    deployments:
      - base_url: http://10.0.0.5:8000/v1   # OpenAI-compatible; api_key_env: NAME for its key
      - base_url: http://10.0.0.6:8000/v1
    fallbacks: [default_model]
  - name: default_model
    deployments:
      - local: inference/default_model
"""


def test_the_issues_yaml_shape_loads(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(ISSUE_SHAPE)
    config = registry_config_load(path, root=ROOT, environ={})
    fast, default = config.models
    assert fast.name == "fast" and fast.context_length == 4096 and fast.fallbacks == ("default_model",)
    assert [d.base_url for d in fast.deployments] == ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"]
    assert [d.label for d in fast.deployments] == ["10.0.0.5:8000", "10.0.0.6:8000"]
    assert all(d.upstream_model == "fast" for d in fast.deployments)
    (local,) = default.deployments
    assert local.local == str(ROOT / "inference" / "default_model")  # relative to the project
    assert config.router.cooldown_s == 30 and config.router.health_check_s == 5


def test_toml_says_the_same(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        """
[router]
cooldown_seconds = 10
health_check_seconds = 1

[[models]]
name = "fast"
aliases = ["gpt-4o-mini"]
[[models.deployments]]
base_url = "https://llm.example/v1"
api_key_env = "FAST_KEY"
model = "Qwen/Qwen2.5-7B-Instruct"
timeout_seconds = 60
"""
    )
    config = registry_config_load(path, root=ROOT, environ={"FAST_KEY": "sk-upstream"})
    (fast,) = config.models
    (deployment,) = fast.deployments
    assert fast.aliases == ("gpt-4o-mini",)
    assert deployment.api_key == "sk-upstream"
    assert deployment.upstream_model == "Qwen/Qwen2.5-7B-Instruct"
    assert deployment.timeout_s == 60
    assert config.router.cooldown_s == 10


def test_two_deployments_on_one_host_get_distinct_labels() -> None:
    config = registry_config_parse(
        {
            "models": [
                {"name": "m", "deployments": [{"base_url": "http://h:1/a"}, {"base_url": "http://h:1/b"}]}
            ]
        },
        root=ROOT,
        environ={},
    )
    assert [d.label for d in config.models[0].deployments] == ["h:1", "h:1#2"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "models: a list of models is required"),
        ({"models": []}, "at least one model"),
        ({"models": [{"name": "m", "deployments": []}]}, "models[0] (m).deployments: at least one"),
        ({"models": [{"name": "m", "deployments": [{}]}]}, "exactly one of `local` and `base_url`"),
        (
            {"models": [{"name": "m", "deployments": [{"local": "x", "base_url": "http://h/v1"}]}]},
            "exactly one of",
        ),
        ({"models": [{"name": "m", "deployments": [{"base_url": "ftp://h/v1"}]}]}, "not an http(s) URL"),
        ({"models": [{"name": "m", "deployment": []}]}, "unknown key 'deployment'"),
        ({"models": [{"name": " m", "deployments": [{"local": "x"}]}]}, "models[0].name"),
        (
            {"models": [{"name": "m", "deployments": [{"base_url": "http://h/v1", "api_key_env": "NOPE"}]}]},
            "no variable 'NOPE'",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"local": "x", "model": "y"}]}]},
            "only for a `base_url` deployment",
        ),
        (
            {
                "models": [
                    {"name": "m", "deployments": [{"local": "x"}]},
                    {"name": "n", "aliases": ["m"], "deployments": [{"local": "x"}]},
                ]
            },
            "model name 'm' is used twice",
        ),
        ({"models": [{"name": "m", "fallbacks": ["z"], "deployments": [{"local": "x"}]}]}, "fallback 'z'"),
        ({"models": [{"name": "m", "fallbacks": ["m"], "deployments": [{"local": "x"}]}]}, "itself"),
        ({"models": [{"name": "m", "context_length": 0, "deployments": [{"local": "x"}]}]}, "context_length"),
        (
            {"router": {"cooldown_seconds": -1}, "models": [{"name": "m", "deployments": [{"local": "x"}]}]},
            "router.cooldown_seconds",
        ),
    ],
)
def test_a_mistake_is_named_where_it_is(document: dict, message: str) -> None:
    with pytest.raises(RegistryConfigError) as raised:
        registry_config_parse(document, root=ROOT, environ={})
    assert message in str(raised.value)


def test_a_broken_file_fails_the_deploys_check(tmp_path: Path, settings: object) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: fast\n    deployments: [{base_url: nowhere}]\n")
    settings.LLM_MODELS_FILE = str(path)  # type: ignore[attr-defined]
    with pytest.raises(SystemCheckError, match="inference.E001"):
        call_command("check")
    path.write_text("models: [unclosed\n")
    with pytest.raises(SystemCheckError, match="LLM_MODELS_FILE"):
        call_command("check")
