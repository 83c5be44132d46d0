#!/usr/bin/env python3
"""Parses a Prometheus text exposition (stdin) with the official
prometheus_client parser, as Prometheus itself would read it, and prints
the families as JSON: {family: {"type", "help", "samples": [[name, labels,
value], ...]}}. A malformed exposition raises, so the caller sees a
non-zero exit. Used by crates/authd/tests/observability.rs.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    out = {}
    for family in text_string_to_metric_families(sys.stdin.read()):
        if family.name in out:
            raise SystemExit(f"family {family.name} appears twice")
        out[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "samples": [
                [s.name, s.labels, s.value if math.isfinite(s.value) else str(s.value)]
                for s in family.samples
            ],
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
