#!/usr/bin/env python3
"""Checks manifests rendered from helm/authd (`helm template`), offline.

    check_rendered.py NAME RENDERED.yaml --kube 1.33.0 --kube 1.35.0 [--same-as OTHER.yaml]

1. Every document is validated against the Kubernetes API's JSON schemas of
   each --kube version with kubernetes-validate in strict mode (an unknown
   field is an error). Custom resources whose schema is not part of the
   Kubernetes API (the Prometheus Operator's ServiceMonitor) are reported as
   skipped and checked structurally below instead. A document of any other
   kind without a schema is an error, not a warning.
2. The chart's own promises are checked on the parsed documents: secrets only
   as files from a Secret (never in the ConfigMap or as plain env), the admin
   Service never behind the Ingress, probes, grace period longer than the
   shutdown delay plus the drain time, the security context, the migration
   hook, selectors that match.
3. With --same-as, the documents must equal those of another rendering (the
   same values under Helm 3 and Helm 4), ignoring the chart-generated
   platform token of evaluation mode, which is random.

Prints one summary line; exits non-zero with every problem listed.
"""

import argparse
import copy
import sys

import yaml
from kubernetes_validate import utils as kv

# The secret variables of crates/authd/src/config.rs (VARIABLES, marked
# secret); tests/blackbox/helm.rs keeps the chart in line with that list.
SECRET_VARS = {
    "DATABASE_URL",
    "REDIS_URL",
    "AUTHD_MASTER_KEY",
    "AUTHD_MASTER_KEY_PREVIOUS",
    "AUTHD_PLATFORM_TOKEN",
    "AUTHD_SMTP_URL",
}
# Connection URLs (secrets: they carry credentials) never go in a ConfigMap.
URL_SCHEMES = ("postgres://", "postgresql://", "redis://", "rediss://", "smtp://", "smtps://", "smtp+starttls://")
# Custom resources: not in the Kubernetes API schemas; checked below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
UID = 10001

problems = []


def problem(msg):
    problems.append(msg)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def validate_schemas(docs, versions):
    skipped = set()
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                if key in CRDS:
                    skipped.add(f"{key[1]} ({key[0]})")
                else:
                    problem(f"{ident(doc)}: no Kubernetes {version} schema for {key[0]} {key[1]}")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problem(f"{ident(doc)}: invalid for Kubernetes {version}: {path}: {e.message}")
            except kv.VersionNotSupportedError:
                problem(f"kubernetes-validate does not support Kubernetes {version}")
                return skipped
    return skipped


def check_pod(owner, pod_spec, pod_labels, configmaps, secrets_by_name):
    sc = pod_spec.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != UID:
        problem(f"{owner}: pod securityContext must set runAsNonRoot and runAsUser {UID}")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem(f"{owner}: pod seccompProfile must be RuntimeDefault")
    if pod_spec.get("automountServiceAccountToken") is not False:
        problem(f"{owner}: automountServiceAccountToken must be false")
    if pod_spec.get("enableServiceLinks") is not False:
        problem(f"{owner}: enableServiceLinks must be false (service links inject AUTHD_* variables)")
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    for c in pod_spec.get("containers") or []:
        where = f"{owner} container {c['name']}"
        csc = c.get("securityContext") or {}
        if csc.get("readOnlyRootFilesystem") is not True:
            problem(f"{where}: readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            problem(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problem(f"{where}: capabilities must drop ALL")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        tmp = mounts.get("/tmp")
        if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
            problem(f"{where}: /tmp must be an emptyDir")
        for e in c.get("env") or []:
            name = e["name"]
            if name in SECRET_VARS:
                problem(f"{where}: {name} is set as a plain variable; secrets come as {name}_FILE")
            if name.endswith("_FILE") and name[: -len("_FILE")] in SECRET_VARS:
                var, path = name[: -len("_FILE")], e.get("value", "")
                mount_path, _, item = path.rpartition("/")
                m = mounts.get(mount_path)
                vol = volumes.get(m["name"]) if m else None
                if not m or not m.get("readOnly") or not vol or "secret" not in vol:
                    problem(f"{where}: {name}={path} is not in a read-only Secret volume")
                    continue
                items = {i["path"]: i["key"] for i in vol["secret"].get("items") or []}
                if item != var or item not in items:
                    problem(f"{where}: {name}={path}: no item {item} in the Secret volume")
                secret = secrets_by_name.get(vol["secret"]["secretName"])
                if secret is not None and items.get(item) not in (secret.get("data") or {}):
                    problem(f"{where}: Secret {vol['secret']['secretName']} has no key {items.get(item)}")
        for ref in c.get("envFrom") or []:
            name = (ref.get("configMapRef") or {}).get("name")
            if name and name not in configmaps:
                problem(f"{where}: envFrom ConfigMap {name} is not rendered")


def check(docs):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
        name = d.get("metadata", {}).get("name", "")
        if len(name) > 63:
            problem(f"{ident(d)}: name longer than 63 characters")
        labels = d.get("metadata", {}).get("labels") or {}
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            if label not in labels:
                problem(f"{ident(d)}: label {label} missing")
    for kind in ("ConfigMap", "Deployment", "Service", "ServiceAccount"):
        if kind not in kinds:
            problem(f"no {kind} rendered")
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}

    # ConfigMap: non-secret settings only.
    for cm in configmaps.values():
        for k, v in (cm.get("data") or {}).items():
            if k in SECRET_VARS or (k.endswith("_FILE") and k[:-5] in SECRET_VARS):
                problem(f"{ident(cm)}: secret variable {k} in a ConfigMap")
            if any(s in str(v) for s in URL_SCHEMES):
                problem(f"{ident(cm)}: {k} looks like a connection URL (a secret)")
    for s in secrets.values():
        extra = set(s.get("data") or {}) - SECRET_VARS
        if extra:
            problem(f"{ident(s)}: unexpected keys {sorted(extra)}")

    # Deployment.
    deployments = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    server_labels = {}
    for dep in deployments:
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        server_labels = spec["template"]["metadata"].get("labels") or {}
        if not matches(spec["selector"]["matchLabels"], server_labels):
            problem(f"{ident(dep)}: selector does not match the pod labels")
        check_pod(ident(dep), pod, server_labels, configmaps, secrets)
        c = pod["containers"][0]
        if c.get("args") != ["serve"]:
            problem(f"{ident(dep)}: args must be [serve]")
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                problem(f"{ident(dep)}: {probe} must GET {path}, not {got}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
        cm = configmaps.get(((c.get("envFrom") or [{}])[0].get("configMapRef") or {}).get("name"), {})
        data = cm.get("data") or {}
        for var, port in (("AUTHD_LISTEN", "http"), ("AUTHD_ADMIN_LISTEN", "admin")):
            if not str(data.get(var, "")).endswith(f":{ports.get(port)}"):
                problem(f"{ident(dep)}: {var}={data.get(var)} does not match container port {port}")
        delay = int(data.get("AUTHD_SHUTDOWN_DELAY_SECS", 5))
        drain = int(data.get("AUTHD_DRAIN_SECS", 20))
        if int(pod.get("terminationGracePeriodSeconds", 30)) <= delay + drain:
            problem(f"{ident(dep)}: terminationGracePeriodSeconds must exceed {delay} + {drain}")
        if hpas and "replicas" in spec:
            problem(f"{ident(dep)}: replicas set although an HPA scales it")
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in {d["metadata"]["name"] for d in deployments}:
            problem(f"{ident(hpa)}: scaleTargetRef does not name the Deployment")

    # Services: the admin one is ClusterIP, selects the server pods, and no
    # Ingress points at it.
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    admin = [s for s in services.values() if s["metadata"]["labels"].get("app.kubernetes.io/component") == "admin"]
    public = [s for s in services.values() if s["metadata"]["labels"].get("app.kubernetes.io/component") == "server"]
    if len(admin) != 1 or len(public) != 1:
        problem("expected one public and one admin Service")
    for s in admin:
        if s["spec"].get("type", "ClusterIP") != "ClusterIP":
            problem(f"{ident(s)}: the admin Service must be ClusterIP")
        if [p.get("targetPort") for p in s["spec"]["ports"]] != ["admin"]:
            problem(f"{ident(s)}: the admin Service must target only the admin port")
    for s in services.values():
        if not matches(s["spec"].get("selector"), server_labels):
            problem(f"{ident(s)}: selector does not match the server pods")
    admin_names = {s["metadata"]["name"] for s in admin}
    for ing in by_kind(docs, "Ingress"):
        for rule in ing["spec"].get("rules") or []:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]["name"]
                if svc in admin_names or svc not in services:
                    problem(f"{ident(ing)}: routes to {svc}, not the public Service")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind(docs, kind):
            sel = d["spec"].get("selector") or d["spec"].get("podSelector")
            if not matches(sel.get("matchLabels"), server_labels):
                problem(f"{ident(d)}: selector does not match the server pods")
    for np in by_kind(docs, "NetworkPolicy"):
        for rule in np["spec"].get("ingress") or []:
            ports = [p.get("port") for p in rule.get("ports") or []]
            if "admin" in ports and not rule.get("from"):
                problem(f"{ident(np)}: the admin port is open to every peer")

    # The migration Job: a pre-install,pre-upgrade hook running `authd migrate`.
    for job in by_kind(docs, "Job"):
        ann = job["metadata"].get("annotations") or {}
        hooks = set((ann.get("helm.sh/hook") or "").split(","))
        if not {"pre-install", "pre-upgrade"} <= hooks or not ann.get("helm.sh/hook-delete-policy"):
            problem(f"{ident(job)}: must be a pre-install,pre-upgrade hook with a delete policy")
        pod = job["spec"]["template"]["spec"]
        check_pod(ident(job), pod, {}, configmaps, secrets)
        if pod["containers"][0].get("args") != ["migrate"]:
            problem(f"{ident(job)}: args must be [migrate]")
        for v in pod.get("volumes") or []:
            name = (v.get("secret") or {}).get("secretName")
            if name in secrets:
                sann = secrets[name]["metadata"].get("annotations") or {}
                weight = int(sann.get("helm.sh/hook-weight", "0"))
                if "pre-install" not in (sann.get("helm.sh/hook") or "") or weight >= int(ann.get("helm.sh/hook-weight", "0")):
                    problem(f"{ident(job)}: its Secret {name} must be a hook created before it")

    # ServiceMonitor (no schema offline): scrapes /metrics on the admin Service.
    for sm in by_kind(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services.values() if matches(sel, s["metadata"]["labels"])]
        if [s["metadata"]["name"] for s in chosen] != sorted(admin_names):
            problem(f"{ident(sm)}: selects {[s['metadata']['name'] for s in chosen]}, not the admin Service")
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") != "admin" or ep.get("path") != "/metrics":
                problem(f"{ident(sm)}: endpoint must be port admin, path /metrics")
    return kinds


def normalized(docs):
    out = []
    for d in docs:
        d = copy.deepcopy(d)
        if d.get("kind") == "Secret":
            (d.get("data") or {}).pop("AUTHD_PLATFORM_TOKEN", None)
        if d.get("kind") == "Deployment":
            (d["spec"]["template"]["metadata"].get("annotations") or {}).pop("checksum/secret", None)
        out.append(d)
    return sorted(out, key=lambda d: (d.get("kind"), d.get("metadata", {}).get("name")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("rendered")
    ap.add_argument("--kube", action="append", required=True)
    ap.add_argument("--same-as")
    args = ap.parse_args()
    docs = load(args.rendered)
    skipped = validate_schemas(docs, args.kube)
    kinds = check(docs)
    if args.same_as and normalized(docs) != normalized(load(args.same_as)):
        problem(f"rendering differs from {args.same_as}")
    if problems:
        for p in problems:
            print(f"    FAIL {args.name}: {p}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k}" + (f"x{len(v)}" if len(v) > 1 else "") for k, v in sorted(kinds.items()))
    print(f"    ok {args.name}: {len(docs)} manifests valid for Kubernetes {', '.join(args.kube)} (strict): {summary}")
    for s in sorted(skipped):
        print(f"       note: {s} is a custom resource, not in the Kubernetes schemas: checked structurally only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
