#!/usr/bin/env python3
"""Checks the Dockerfile's runtime contract without building it.

    check_dockerfile.py ROOT

The Dockerfile is parsed with BuildKit's own parser (the `dockerfile` package
wraps it), so a syntax error fails here. Then: a multi-stage build from the
Rust version of Cargo.toml's rust-version; a final stage that runs as the
numeric uid the chart's securityContext expects, exposes the chart's two
ports, keeps its data in the chart's data path, has no HEALTHCHECK
(Kubernetes probes instead), and starts with ENTRYPOINT ["authd"] CMD
["serve"]; every path the build copies exists and is not excluded by
.dockerignore.
"""

import fnmatch
import os
import re
import sys

import dockerfile
import yaml

root = sys.argv[1]
problems = []


def problem(msg):
    problems.append(msg)


cmds = dockerfile.parse_file(os.path.join(root, "Dockerfile"))
stages = []
args = {}
for c in cmds:
    if c.cmd == "ARG" and not stages:
        k, _, v = c.value[0].partition("=")
        args[k] = v
    if c.cmd == "FROM":
        stages.append([])
    if stages:
        stages[-1].append(c)
if len(stages) < 2:
    problem("not a multi-stage build")
builder, final = stages[0], stages[-1]


def expand(s):
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)


cargo = open(os.path.join(root, "Cargo.toml")).read()
rust_version = re.search(r'^rust-version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
base = expand(builder[0].value[0])
if base != f"rust:{rust_version}-bookworm":
    problem(f"builder image {base}, expected rust:{rust_version}-bookworm (Cargo.toml rust-version)")

values = yaml.safe_load(open(os.path.join(root, "helm/authd/values.yaml")))
uid = values["securityContext"]["runAsUser"]


def last(cmd):
    found = [c for c in final if c.cmd == cmd]
    return found[-1] if found else None


user = last("USER")
if not user or user.value[0].split(":")[0] != str(uid):
    problem(f"final stage USER must be the numeric uid {uid} (the chart's runAsUser)")
if last("HEALTHCHECK"):
    problem("HEALTHCHECK in the final stage: Kubernetes probes /healthz and /readyz instead")
entry, cmd = last("ENTRYPOINT"), last("CMD")
if not entry or list(entry.value) != ["authd"] or not entry.json:
    problem('ENTRYPOINT must be ["authd"] (exec form)')
if not cmd or list(cmd.value) != ["serve"] or not cmd.json:
    problem('CMD must be ["serve"] (exec form)')
exposed = {v.split("/")[0] for c in final if c.cmd == "EXPOSE" for v in c.value}
for name, port in values["ports"].items():
    if str(port) not in exposed:
        problem(f"the chart's {name} port {port} is not EXPOSEd")
env = {}
for c in final:
    if c.cmd == "ENV":
        env.update(dict(zip(c.value[0::2], c.value[1::2])))
if env.get("AUTHD_DATA_DIR") != values["persistence"]["mountPath"]:
    problem(f"AUTHD_DATA_DIR={env.get('AUTHD_DATA_DIR')} differs from the chart's persistence.mountPath")
volumes = {v for c in final if c.cmd == "VOLUME" for v in c.value}
if env.get("AUTHD_DATA_DIR") not in volumes:
    problem("AUTHD_DATA_DIR is not a VOLUME (the root filesystem is read-only)")
for var, port in (("AUTHD_LISTEN", values["ports"]["http"]), ("AUTHD_ADMIN_LISTEN", values["ports"]["admin"])):
    if not env.get(var, "").endswith(f":{port}"):
        problem(f"{var}={env.get(var)} does not listen on port {port}")

# Build context: every COPY source of the builder exists and survives .dockerignore.
ignore = []
path = os.path.join(root, ".dockerignore")
if os.path.exists(path):
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            ignore.append(line)


def ignored(p):
    # .dockerignore semantics, simplified: last matching pattern wins; "!" re-includes.
    result = False
    for pat in ignore:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        parts = p.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts)))
        if hit:
            result = not neg
    return result


for c in builder:
    if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
        for src in c.value[:-1]:
            if not os.path.exists(os.path.join(root, src)):
                problem(f"COPY {src}: no such path")
            elif ignored(src):
                problem(f"COPY {src}: excluded by .dockerignore")
# What the build needs at compile time must be in the context.
for needed in ("crates/api/assets", "crates/core/data", "migrations/postgres", "migrations/sqlite"):
    if ignored(needed):
        problem(f"{needed} is excluded by .dockerignore but compiled into the binary")

if problems:
    for p in problems:
        print(f"    FAIL Dockerfile: {p}", file=sys.stderr)
    sys.exit(1)
print(
    f"    ok Dockerfile: {len(stages)} stages, builder {base}, final {final[0].value[0]}, "
    f"USER {user.value[0]}, EXPOSE {' '.join(sorted(exposed))}, VOLUME {' '.join(sorted(volumes))}, "
    f"ENTRYPOINT {list(entry.value)} CMD {list(cmd.value)}"
)
