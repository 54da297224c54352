"""Redis client spans.

In place of opentelemetry-instrumentation-redis, whose wrapper cost about 390,000 instructions
per command, four times a bare span (BENCHMARKS.md, issue 15): it formatted the command,
set eight attributes one lock at a time from the connection's settings, and made each span
current. Here a command's span is made only under a recorded span (a request's or a task's:
a background thread's polling does not start traces of its own), with the connection's
attributes worked out once per client, and it is never current (nothing runs under it).
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

_redis_tracer = trace.get_tracer("common.tracing.redis")
_redis_wrapped = False
_MAX_STATEMENT = 1000
_peer_attributes: weakref.WeakKeyDictionary[Any, dict[str, str | int]] = weakref.WeakKeyDictionary()


def _redis_peer(client: Any) -> dict[str, str | int]:
    attributes = _peer_attributes.get(client)
    if attributes is None:
        attributes = {"db.system": "redis"}
        pool = getattr(client, "connection_pool", None)
        options = getattr(pool, "connection_kwargs", None) or {}
        if "path" in options:
            attributes["net.peer.name"] = str(options["path"])
            attributes["net.transport"] = "other"
        elif options:
            attributes["net.peer.name"] = str(options.get("host", "localhost"))
            attributes["net.peer.port"] = int(options.get("port", 6379))
            attributes["net.transport"] = "ip_tcp"
        if options:
            attributes["db.redis.database_index"] = int(options.get("db") or 0)
        _peer_attributes[client] = attributes
    return attributes


# Set while a platform span that stands for its Redis calls is open (admission: one script):
# those calls make no spans of their own, the platform's span carries the store's attributes.
_redis_spans_folded: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "redis_spans_folded", default=False
)


def redis_spans_fold() -> contextvars.Token[bool]:
    """The Redis calls from here to `redis_spans_unfold(token)` make no spans."""
    return _redis_spans_folded.set(True)


def redis_spans_unfold(token: contextvars.Token[bool]) -> None:
    _redis_spans_folded.reset(token)


def _redis_traced() -> bool:
    return not _redis_spans_folded.get() and trace.get_current_span().is_recording()


def _redis_span(client: Any, name: str, attributes: dict[str, Any]) -> trace.Span:
    return _redis_tracer.start_span(
        name, kind=SpanKind.CLIENT, attributes={**_redis_peer(client), **attributes}
    )


def _redis_call(span: trace.Span, call: Any, args: Any, kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()


def _traced_command(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """`Redis.execute_command` and `RedisCluster.execute_command`: a span named after the
    command, its arguments left out (`EVALSHA ? ? ?`)."""
    if not args or not _redis_traced():
        return wrapped(*args, **kwargs)
    command = str(args[0])
    statement = command + " ?" * (len(args) - 1)
    span = _redis_span(
        instance,
        command,
        {"db.statement": statement[:_MAX_STATEMENT], "db.redis.args_length": len(args)},
    )
    return _redis_call(span, wrapped, args, kwargs)


def _traced_pipeline(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """`Pipeline.execute` and `ClusterPipeline.execute`: one span for the whole pipeline."""
    if not _redis_traced():
        return wrapped(*args, **kwargs)
    stack = getattr(instance, "command_stack", None) or []
    # redis.client's stack holds (args, options) pairs, redis.cluster's PipelineCommand objects.
    names = [str((command.args if hasattr(command, "args") else command[0])[0]) for command in stack]
    statement = "\n".join(names)[:_MAX_STATEMENT]
    span = _redis_span(
        instance,
        " ".join(dict.fromkeys(names))[:_MAX_STATEMENT] or "PIPELINE",
        {"db.statement": statement, "db.redis.pipeline_length": len(stack)},
    )
    return _redis_call(span, wrapped, args, kwargs)


def instrumented() -> bool:
    return _redis_wrapped


def redis_spans_instrument() -> None:
    global _redis_wrapped
    if _redis_wrapped:
        return
    from wrapt import wrap_function_wrapper

    wrap_function_wrapper("redis.client", "Redis.execute_command", _traced_command)
    wrap_function_wrapper("redis.client", "Pipeline.execute", _traced_pipeline)
    wrap_function_wrapper("redis.cluster", "RedisCluster.execute_command", _traced_command)
    wrap_function_wrapper("redis.cluster", "ClusterPipeline.execute", _traced_pipeline)
    _redis_wrapped = True


def redis_spans_uninstrument() -> None:
    global _redis_wrapped
    if not _redis_wrapped:
        return
    import redis.client
    import redis.cluster
    from opentelemetry.instrumentation.utils import unwrap

    unwrap(redis.client.Redis, "execute_command")
    unwrap(redis.client.Pipeline, "execute")
    unwrap(redis.cluster.RedisCluster, "execute_command")
    unwrap(redis.cluster.ClusterPipeline, "execute")
    _redis_wrapped = False
