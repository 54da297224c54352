"""The models a gateway serves, as declared in a file (`LLM_MODELS_FILE`, YAML or TOML, in the
shape of LiteLLM's `model_list`):

    router:                         # optional
      cooldown_seconds: 30          # a failed deployment is skipped this long...
      health_check_seconds: 5       # ...unless a health check finds it back sooner
    models:
      - name: fast                  # what clients send as `model`
        aliases: [gpt-4o-mini]      # other names for it
        context_length: 4096        # where the deployments cannot tell
        deployments:
          - base_url: http://10.0.0.5:8000/v1    # OpenAI-compatible
            api_key_env: FAST_KEY                # the environment variable holding its key
            model: Qwen/Qwen2.5-7B-Instruct      # the upstream's own name (default: `name`)
            timeout_seconds: 60
          - base_url: http://10.0.0.6:8000/v1
        fallbacks: [default_model]  # tried, in order, when every deployment failed
      - name: default_model
        deployments:
          - local: inference/default_model       # relative to the project's root

Parsing is strict: an unknown key, a missing deployment target, a duplicated name or a fallback
that names nothing is a `RegistryConfigError` naming where it is, so that a deploy with a typo
fails at start rather than at the first request."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MODEL_NAME_MAX_CHARS = 256  # the API's `model` field


class RegistryConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DeploymentConfig:
    label: str  # names the deployment in metrics and logs: host:port, or local:<folder>
    local: str | None = None  # a model folder (or an id in the local Hugging Face cache)
    base_url: str | None = None  # an OpenAI-compatible server
    api_key: str = ""
    upstream_model: str = ""  # the name the upstream knows the model by
    timeout_s: float | None = None  # None: the gateway's LLM_REQUEST_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ModelConfig:
    name: str
    deployments: tuple[DeploymentConfig, ...]
    aliases: tuple[str, ...] = ()
    context_length: int | None = None
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouterConfig:
    cooldown_s: float = 30.0
    health_check_s: float = 5.0


@dataclass(frozen=True)
class RegistryConfig:
    models: tuple[ModelConfig, ...]  # the first is the default, served when a request names none
    router: RouterConfig = field(default_factory=RouterConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise RegistryConfigError("models: at least one model is required")
        seen: dict[str, str] = {}
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise RegistryConfigError(
                        f"model name {name!r} is used twice ({seen[name]} and {model.name})"
                    )
                seen[name] = model.name
        for model in self.models:
            for fallback in model.fallbacks:
                if seen.get(fallback) is None:
                    raise RegistryConfigError(f"{model.name}: fallback {fallback!r} is not a model here")
                if seen[fallback] == model.name:
                    raise RegistryConfigError(f"{model.name}: a model cannot fall back on itself")


def registry_config_load(
    path: str | Path, *, root: Path, environ: Mapping[str, str] | None = None
) -> RegistryConfig:
    """Reads a registry file (.yaml/.yml or .toml). `local` paths are relative to `root`;
    `api_key_env` is read from `environ` (default: the process's environment)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryConfigError(f"{path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix == ".toml":
            document: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            raise RegistryConfigError(f"{path}: use a .yaml, .yml or .toml file")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, RegistryConfigError):
            raise
        raise RegistryConfigError(f"{path}: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError, whose module is only imported above
        raise RegistryConfigError(f"{path}: {exc}") from exc
    return registry_config_parse(document, root=root, environ=os.environ if environ is None else environ)


def registry_config_parse(document: Any, *, root: Path, environ: Mapping[str, str]) -> RegistryConfig:
    top = _mapping(document, "the file", allowed={"models", "router"})
    raw_models = top.get("models")
    if not isinstance(raw_models, list):
        raise RegistryConfigError("models: a list of models is required")
    models = tuple(
        _model(raw, where=f"models[{i}]", root=root, environ=environ) for i, raw in enumerate(raw_models)
    )
    router = _mapping(top.get("router", {}), "router", allowed={"cooldown_seconds", "health_check_seconds"})
    return RegistryConfig(
        models=models,
        router=RouterConfig(
            cooldown_s=_number(router.get("cooldown_seconds", 30), "router.cooldown_seconds", minimum=0),
            health_check_s=_number(
                router.get("health_check_seconds", 5), "router.health_check_seconds", minimum=0.1
            ),
        ),
    )


def _model(raw: Any, *, where: str, root: Path, environ: Mapping[str, str]) -> ModelConfig:
    spec = _mapping(raw, where, allowed={"name", "aliases", "context_length", "deployments", "fallbacks"})
    name = _name(spec.get("name"), f"{where}.name")
    where = f"{where} ({name})"
    raw_deployments = spec.get("deployments")
    if not isinstance(raw_deployments, list) or not raw_deployments:
        raise RegistryConfigError(f"{where}.deployments: at least one deployment is required")
    deployments = [
        _deployment(raw, where=f"{where}.deployments[{i}]", model=name, root=root, environ=environ)
        for i, raw in enumerate(raw_deployments)
    ]
    context_length = spec.get("context_length")
    if context_length is not None and (
        not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 1
    ):
        raise RegistryConfigError(f"{where}.context_length: a positive whole number is required")
    return ModelConfig(
        name=name,
        deployments=_unique_labels(deployments),
        aliases=tuple(
            _name(a, f"{where}.aliases") for a in _list(spec.get("aliases", []), f"{where}.aliases")
        ),
        context_length=context_length,
        fallbacks=tuple(
            _name(f, f"{where}.fallbacks") for f in _list(spec.get("fallbacks", []), f"{where}.fallbacks")
        ),
    )


def _deployment(
    raw: Any, *, where: str, model: str, root: Path, environ: Mapping[str, str]
) -> DeploymentConfig:
    spec = _mapping(raw, where, allowed={"local", "base_url", "api_key_env", "model", "timeout_seconds"})
    local, base_url = spec.get("local"), spec.get("base_url")
    if (local is None) == (base_url is None):
        raise RegistryConfigError(f"{where}: exactly one of `local` and `base_url` is required")
    timeout = spec.get("timeout_seconds")
    timeout_s = None if timeout is None else _number(timeout, f"{where}.timeout_seconds", minimum=0.001)
    if local is not None:
        if not isinstance(local, str) or not local.strip():
            raise RegistryConfigError(f"{where}.local: a model folder is required")
        for key in ("api_key_env", "model"):
            if key in spec:
                raise RegistryConfigError(f"{where}.{key}: only for a `base_url` deployment")
        path = Path(local)
        resolved = path if path.is_absolute() else root / path
        # An id of the local Hugging Face cache is not a folder here: kept as written.
        target = str(resolved) if resolved.exists() else local
        return DeploymentConfig(label=f"local:{Path(local).name}", local=target, timeout_s=timeout_s)
    if not isinstance(base_url, str):
        raise RegistryConfigError(f"{where}.base_url: a URL is required")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryConfigError(f"{where}.base_url: {base_url!r} is not an http(s) URL")
    api_key = ""
    key_env = spec.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or key_env not in environ:
            raise RegistryConfigError(f"{where}.api_key_env: the environment has no variable {key_env!r}")
        api_key = environ[key_env]
    upstream_model = spec.get("model", model)
    if not isinstance(upstream_model, str) or not upstream_model:
        raise RegistryConfigError(f"{where}.model: the upstream's model name is required")
    return DeploymentConfig(
        label=parts.netloc,
        base_url=base_url,
        api_key=api_key,
        upstream_model=upstream_model,
        timeout_s=timeout_s,
    )


def _unique_labels(deployments: list[DeploymentConfig]) -> tuple[DeploymentConfig, ...]:
    """Two deployments on one host (two paths, or one server twice) get #2, #3..."""
    seen: dict[str, int] = {}
    unique = []
    for deployment in deployments:
        seen[deployment.label] = seen.get(deployment.label, 0) + 1
        count = seen[deployment.label]
        if count > 1:
            deployment = DeploymentConfig(**{**vars(deployment), "label": f"{deployment.label}#{count}"})
        unique.append(deployment)
    return tuple(unique)


def _mapping(raw: Any, where: str, *, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RegistryConfigError(f"{where}: a mapping is required")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RegistryConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise RegistryConfigError(f"{where}: a list is required")
    return raw


def _name(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip() or raw != raw.strip() or len(raw) > MODEL_NAME_MAX_CHARS:
        raise RegistryConfigError(
            f"{where}: a model name is required (no surrounding spaces, at most {MODEL_NAME_MAX_CHARS} characters)"
        )
    return raw


def _number(raw: Any, where: str, *, minimum: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < minimum:
        raise RegistryConfigError(f"{where}: a number >= {minimum:g} is required")
    return float(raw)
