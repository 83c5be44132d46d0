#!/usr/bin/env python3
"""Decodes OTLP/HTTP trace exports (ExportTraceServiceRequest protobuf
bodies, one file per argument) with the official opentelemetry-proto
package and prints every span as one JSON object per line:

    {"name", "trace_id", "span_id", "parent_span_id", "kind", "status",
     "attributes": {key: value}, "resource": {key: value}, "events": [name]}

Ids are lower-case hex. Used by crates/authd/tests/observability.rs.
"""
import json
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def main(paths):
    for path in paths:
        req = ExportTraceServiceRequest()
        with open(path, "rb") as f:
            req.ParseFromString(f.read())
        for rs in req.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    print(json.dumps({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "status": span.status.code,
                        "attributes": attrs(span.attributes),
                        "events": [e.name for e in span.events],
                        "resource": resource,
                    }))


if __name__ == "__main__":
    main(sys.argv[1:])
