{{/*
Every helper takes a chart context: this chart's root context (`.`), or, from an
application chart that depends on this one, the subchart's context `.Subcharts.lipservice`
(its .Values are this chart's values, its .Chart this chart's metadata).
*/}}

{{- define "lipservice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lipservice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "lipservice.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lipservice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lipservice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lipservice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lipservice.labels" -}}
helm.sh/chart: {{ include "lipservice.chart" . }}
{{ include "lipservice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lipservice.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "lipservice.configMapName" -}}
{{- printf "%s-config" (include "lipservice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lipservice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lipservice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lipservice.claimName" -}}
{{- .Values.storage.persistence.existingClaim | default (printf "%s-state" (include "lipservice.fullname" .)) }}
{{- end }}

{{/* True (non-empty) when the gateway keeps state on a PVC. */}}
{{- define "lipservice.usesPVC" -}}
{{- if and (eq .Values.mode "gateway") .Values.storage.persistence.enabled }}true{{ end }}
{{- end }}

{{/*
The LipService config as YAML: values.config, with `redis.enabled` merged into its
storage (backend redis, the URL from the environment, the key namespace).
*/}}
{{- define "lipservice.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.redis.enabled }}
{{- $ns := .Values.redis.namespace | default (include "lipservice.fullname" .) }}
{{- $shared := dict "backend" "redis" "redis_url" "${env:LIPSERVICE_REDIS_URL}" "redis" (dict "namespace" $ns) }}
{{- $_ := set $config "storage" (merge $shared ($config.storage | default dict)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The config checksum: pods roll when the rendered config changes. */}}
{{- define "lipservice.configChecksum" -}}
{{- include "lipservice.config" . | sha256sum }}
{{- end }}

{{/*
Pod annotations LipService needs: the config checksum and, unless disabled, Prometheus
scrape annotations for the metrics port.
*/}}
{{- define "lipservice.podAnnotations" -}}
checksum/lipservice-config: {{ include "lipservice.configChecksum" . }}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{- define "lipservice.validate" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) }}
{{- fail (printf "mode must be gateway or sidecar, got %q" .Values.mode) }}
{{- end }}
{{- if and .Values.redis.enabled (not (and .Values.existingSecret .Values.secretKeys.LIPSERVICE_REDIS_URL)) }}
{{- fail "redis.enabled needs the Redis URL from a Secret: set existingSecret (and secretKeys.LIPSERVICE_REDIS_URL to its key)" }}
{{- end }}
{{- if include "lipservice.usesPVC" . }}
{{- $rwo := and (has "ReadWriteOnce" .Values.storage.persistence.accessModes) (not (has "ReadWriteMany" .Values.storage.persistence.accessModes)) }}
{{- if and $rwo (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "storage.persistence with a ReadWriteOnce claim needs one replica (replicaCount: 1, autoscaling.enabled: false); use a ReadWriteMany class or the emptyDir default for more" }}
{{- end }}
{{- end }}
{{- end }}
