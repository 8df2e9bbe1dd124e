"""An OTLP/gRPC trace receiver for tests and benchmarks: a gRPC server on 127.0.0.1 that
implements opentelemetry.proto.collector.trace.v1.TraceService/Export and keeps every span it
receives as a plain dict (hex ids, name, kind, the resource's service.name, attributes as
strings).

    with OtlpTraceReceiver() as receiver:
        ...  # a server exporting to receiver.endpoint
        receiver.wait_for(lambda spans: len(spans) >= 3)

Run as a program it is a sink that only counts what it receives (keeping nothing), for
`tandemctl bench pay` with tracing on: `python tests/python/otlp_receiver.py --port 4317` (until
Ctrl-C, when it prints the count).
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2

_KIND = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}


def _any_value_str(v) -> str:
    which = v.WhichOneof("value")
    if which is None:
        return ""
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "int_value":
        return str(v.int_value)
    if which == "double_value":
        return repr(v.double_value)
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "array_value":
        return "[" + ",".join(_any_value_str(x) for x in v.array_value.values) + "]"
    if which == "kvlist_value":
        return "{" + ",".join(f"{kv.key}={_any_value_str(kv.value)}" for kv in v.kvlist_value.values) + "}"
    return str(getattr(v, which))


def _attrs(kvs) -> dict[str, str]:
    return {kv.key: _any_value_str(kv.value) for kv in kvs}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: "OtlpTraceReceiver"):
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 (grpc method name)
        if self._sink.count_only:
            self._sink._count(sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
            return trace_service_pb2.ExportTraceServiceResponse()
        got = []
        for rs in request.resource_spans:
            res_attrs = _attrs(rs.resource.attributes)
            service = res_attrs.get("service.name", "")
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    got.append(
                        {
                            "trace_id": sp.trace_id.hex(),
                            "span_id": sp.span_id.hex(),
                            "parent_span_id": sp.parent_span_id.hex(),
                            "name": sp.name,
                            "kind": _KIND.get(sp.kind, str(sp.kind)),
                            "service.name": service,
                            "scope": ss.scope.name,
                            "attributes": _attrs(sp.attributes),
                        }
                    )
        self._sink._add(got)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpTraceReceiver:
    """gRPC server on 127.0.0.1:<free port> implementing
    opentelemetry.proto.collector.trace.v1.TraceService/Export."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, max_workers: int = 4, count_only: bool = False
    ):
        self._lock = threading.Condition()
        self._spans: list[dict] = []
        self.export_calls = 0
        # A sink for benchmarks counts spans without keeping them.
        self.count_only = count_only
        self.counted = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")  # port 0 -> OS picks a free one
        if self.port == 0:
            raise RuntimeError(f"could not bind {host}:{port}")
        self.host = host
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _count(self, spans: int) -> None:
        with self._lock:
            self.export_calls += 1
            self.counted += spans

    def _add(self, spans: list[dict]) -> None:
        with self._lock:
            self.export_calls += 1
            self._spans.extend(spans)
            self._lock.notify_all()

    def spans(self) -> list[dict]:
        with self._lock:
            return [dict(s, attributes=dict(s["attributes"])) for s in self._spans]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        """Block until pred(spans) is true or timeout; returns the final pred value."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not pred(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def stop(self, grace: float | None = 0.5) -> None:
        self._server.stop(grace).wait()

    def __enter__(self) -> "OtlpTraceReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="An OTLP/gRPC trace sink that counts spans.")
    parser.add_argument("--port", type=int, default=4317)
    port = parser.parse_args().port
    with OtlpTraceReceiver(port=port, max_workers=8, count_only=True) as receiver:
        print(f"counting spans on {receiver.endpoint}; Ctrl-C to stop", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stopped.set())
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait()
        print(f"{receiver.counted} spans in {receiver.export_calls} exports", flush=True)
