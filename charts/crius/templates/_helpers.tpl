{{/*
Names, labels and checks shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "crius.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else RELEASE-NAME, else RELEASE when the
release name already contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "crius.fullname" -}}
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

{{/* CHART-VERSION, for the helm.sh/chart label. */}}
{{- define "crius.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object carries (Helm's recommended set). */}}
{{- define "crius.labels" -}}
helm.sh/chart: {{ include "crius.chart" . }}
{{ include "crius.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crius
{{- end }}

{{/* The labels the DaemonSet selects its pods by (immutable: never add to them). */}}
{{- define "crius.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crius.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The installer image reference; the tag defaults to the chart's appVersion. */}}
{{- define "crius.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Whether the metrics Service is rendered (a ServiceMonitor needs it). */}}
{{- define "crius.metricsService" -}}
{{- if or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/* The port of config.metrics.address (IP:PORT or [IPv6]:PORT). */}}
{{- define "crius.metricsPort" -}}
{{- regexFind "[0-9]+$" .Values.config.metrics.address }}
{{- end }}

{{/*
Fails the render when scraping is asked for but crius would not be reachable: metrics off, or
bound to loopback only (the default 127.0.0.1:9090).
*/}}
{{- define "crius.checkMetrics" -}}
{{- if include "crius.metricsService" . }}
{{- if not .Values.config.metrics.enabled }}
{{- fail "metrics.service/serviceMonitor need config.metrics.enabled=true" }}
{{- end }}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.config.metrics.address "" }}
{{- if or (hasPrefix "127." $host) (eq $host "[::1]") (eq $host "localhost") }}
{{- fail (printf "metrics.service/serviceMonitor need config.metrics.address on an address other pods can reach, e.g. 0.0.0.0:%s, not %s" (include "crius.metricsPort" .) .Values.config.metrics.address) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The RuntimeClass handlers: runtimeClasses.handlers, else every configured handler. */}}
{{- define "crius.runtimeClassHandlers" -}}
{{- $handlers := .Values.runtimeClasses.handlers }}
{{- if not $handlers }}
{{- $handlers = list }}
{{- range $name, $handler := .Values.config.runtime.handlers }}
{{- if $handler }}{{ $handlers = append $handlers $name }}{{ end }}
{{- end }}
{{- end }}
{{- range $handlers }}
{{- if not (hasKey $.Values.config.runtime.handlers .) }}
{{- fail (printf "runtimeClasses.handlers: %q is not a key of config.runtime.handlers" .) }}
{{- end }}
{{- end }}
{{- toJson $handlers }}
{{- end }}

{{/* A TOML value: strings, booleans, integers and arrays of strings as JSON, which TOML reads the same. */}}
{{- define "crius.toml" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else if kindIs "int64" . }}{{ . }}{{ else if kindIs "int" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}
