{{/*
Names and labels.
*/}}
{{- define "authd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "authd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A name derived from the full name: (list . "suffix"). */}}
{{- define "authd.suffixed" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "authd.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" }}
{{- end }}

{{- define "authd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "authd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "authd.labels" -}}
helm.sh/chart: {{ include "authd.chart" . }}
{{ include "authd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: authd
{{- end }}

{{/* The authd server pods (not the migration Job's). */}}
{{- define "authd.serverSelectorLabels" -}}
{{ include "authd.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "authd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "authd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "authd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* host:port for a listener: (list . port). IPv6 hosts are bracketed. */}}
{{- define "authd.listen" -}}
{{- $host := (index . 0).Values.config.bindAddress }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int (index . 1)) }}
{{- else }}
{{- printf "%s:%d" $host (int (index . 1)) }}
{{- end }}
{{- end }}

{{/*
AUTHD_PUBLIC_URL: config.publicUrl, else the first ingress host (https when a
TLS entry lists it), else the public Service's in-cluster URL.
*/}}
{{- define "authd.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $scheme := "http" }}
{{- range .Values.ingress.tls }}
{{- if has $host (.hosts | default list) }}
{{- $scheme = "https" }}
{{- end }}
{{- end }}
{{- printf "%s://%s" $scheme $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "authd.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/*
Secret settings.

"authd.secretVariables" is every secret variable authd reads (the ones marked
secret in crates/authd/src/config.rs VARIABLES; tests/blackbox/helm.rs keeps
the two lists equal). Each reaches the container as a file in
/etc/authd/secrets and NAME_FILE pointing at it.
*/}}
{{- define "authd.secretVariables" -}}
DATABASE_URL REDIS_URL AUTHD_MASTER_KEY AUTHD_MASTER_KEY_PREVIOUS AUTHD_PLATFORM_TOKEN AUTHD_SMTP_URL
{{- end }}

{{- define "authd.secretDir" -}}
/etc/authd/secrets
{{- end }}

{{- define "authd.secretName" -}}
{{- default (include "authd.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
Whether the chart generates the platform token (evaluation mode with the
chart's own Secret and no token given): "true" or "".
*/}}
{{- define "authd.generatesPlatformToken" -}}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.values.AUTHD_PLATFORM_TOKEN) (not (include "authd.production" .)) }}true{{ end }}
{{- end }}

{{/*
The secret variables this installation provides, as YAML: NAME: key-in-the-Secret.
*/}}
{{- define "authd.secretKeys" -}}
{{- $s := .Values.secret }}
{{- $generated := include "authd.generatesPlatformToken" . }}
{{- range $name := splitList " " (include "authd.secretVariables" .) }}
{{- if $s.existingSecret }}
{{- with get $s.existingSecretKeys $name }}
{{ $name }}: {{ . | quote }}
{{- end }}
{{- else if or (get $s.values $name) (and (eq $name "AUTHD_PLATFORM_TOKEN") $generated) }}
{{ $name }}: {{ $name | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Production mode (a Postgres URL is provided): "true" or "". */}}
{{- define "authd.production" -}}
{{- if .Values.secret.existingSecret }}
{{- if .Values.secret.existingSecretKeys.DATABASE_URL }}true{{ end }}
{{- else if .Values.secret.values.DATABASE_URL }}true{{ end }}
{{- end }}

{{/* REDIS_URL is provided: "true" or "". */}}
{{- define "authd.hasRedis" -}}
{{- if hasKey (include "authd.secretKeys" . | fromYaml) "REDIS_URL" }}true{{ end }}
{{- end }}

{{/*
Checks of combinations the schema cannot express; each fails rendering with
a message naming the values to change.
*/}}
{{- define "authd.validate" -}}
{{- $keys := include "authd.secretKeys" . | fromYaml }}
{{- $multi := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if include "authd.production" . }}
{{- range $name := list "AUTHD_MASTER_KEY" "AUTHD_PLATFORM_TOKEN" }}
{{- if not (hasKey $keys $name) }}
{{- fail (printf "authd: with a Postgres DATABASE_URL, %s is required: set secret.values.%s, or secret.existingSecretKeys.%s with secret.existingSecret" $name $name $name) }}
{{- end }}
{{- end }}
{{- if and $multi (not (hasKey $keys "REDIS_URL")) }}
{{- fail "authd: more than one replica (replicaCount > 1 or autoscaling.enabled) needs REDIS_URL: replicas share sessions, revocations and rate limits through Redis" }}
{{- end }}
{{- else if $multi }}
{{- fail "authd: evaluation mode (no DATABASE_URL) keeps its data in one pod: set replicaCount 1 and autoscaling.enabled false, or provide DATABASE_URL and REDIS_URL" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "authd: autoscaling on CPU needs resources.requests.cpu" }}
{{- end }}
{{- $minGrace := add (int .Values.config.shutdownDelaySecs) (int .Values.config.drainSecs) }}
{{- if and (not (kindIs "invalid" .Values.terminationGracePeriodSeconds)) (le (int .Values.terminationGracePeriodSeconds) $minGrace) }}
{{- fail (printf "authd: terminationGracePeriodSeconds (%d) must exceed config.shutdownDelaySecs + config.drainSecs (%d), or Kubernetes kills authd while it drains" (int .Values.terminationGracePeriodSeconds) $minGrace) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "authd: podDisruptionBudget: set minAvailable or maxUnavailable, not both (null the other)" }}
{{- end }}
{{- end }}

{{- define "authd.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (int .Values.config.shutdownDelaySecs) (int .Values.config.drainSecs) 10 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES: namespace, pod (from K8S_POD_NAME) and otel.resourceAttributes. */}}
{{- define "authd.otelResourceAttributes" -}}
{{- $attrs := list (printf "k8s.namespace.name=%s" .Release.Namespace) "k8s.pod.name=$(K8S_POD_NAME)" }}
{{- range $k, $v := .Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $attrs }}
{{- end }}

{{/*
The migration Job's secret files, as YAML NAME: key-in-its-Secret. `authd
migrate` reads the configuration like `serve` does, so with DATABASE_URL it
needs the master key and the platform token too.
*/}}
{{- define "authd.migrationKeys" -}}
{{- $s := .Values.secret }}
{{- if $s.existingSecret }}
DATABASE_URL: {{ default $s.existingSecretKeys.DATABASE_URL $s.existingSecretKeys.migrationDatabaseUrl | quote }}
AUTHD_MASTER_KEY: {{ $s.existingSecretKeys.AUTHD_MASTER_KEY | quote }}
AUTHD_PLATFORM_TOKEN: {{ $s.existingSecretKeys.AUTHD_PLATFORM_TOKEN | quote }}
{{- else }}
DATABASE_URL: DATABASE_URL
AUTHD_MASTER_KEY: AUTHD_MASTER_KEY
AUTHD_PLATFORM_TOKEN: AUTHD_PLATFORM_TOKEN
{{- end }}
{{- end }}

{{- define "authd.migrationSecretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else }}
{{- include "authd.suffixed" (list . "migrate") }}
{{- end }}
{{- end }}
