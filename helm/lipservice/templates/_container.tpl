{{/*
The LipService container, as one list item (`- name: ...`). Used by the gateway Deployment
and, through lipservice.sidecarContainer, by an application's pod spec.
*/}}
{{- define "lipservice.container" -}}
- name: {{ .Values.sidecar.containerName | default "lipservice" }}
  image: {{ include "lipservice.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - -c
    - /etc/lipservice/config.yaml
    {{- range .Values.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: ls-otlp-grpc
      containerPort: {{ .Values.ports.otlpGrpc }}
      protocol: TCP
    - name: ls-otlp-http
      containerPort: {{ .Values.ports.otlpHttp }}
      protocol: TCP
    - name: ls-metrics
      containerPort: {{ .Values.ports.metrics }}
      protocol: TCP
  {{- with include "lipservice.env" . }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- with .Values.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.native) (gt (int .Values.sidecar.preStopDelaySeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["python", "-c", "import time; time.sleep({{ int .Values.sidecar.preStopDelaySeconds }})"]
  {{- end }}
  volumeMounts:
    - name: lipservice-config
      mountPath: /etc/lipservice
      readOnly: true
    - name: lipservice-state
      mountPath: {{ .Values.storage.mountPath }}
    - name: lipservice-tmp
      mountPath: /tmp
{{- end }}

{{/* The pod volumes the container mounts, as list items. */}}
{{- define "lipservice.volumes" -}}
- name: lipservice-config
  configMap:
    name: {{ include "lipservice.configMapName" . }}
- name: lipservice-state
  {{- if include "lipservice.usesPVC" . }}
  persistentVolumeClaim:
    claimName: {{ include "lipservice.claimName" . }}
  {{- else }}
  emptyDir:
    {{- toYaml (.Values.storage.emptyDir | default dict) | nindent 4 }}
  {{- end }}
- name: lipservice-tmp
  emptyDir:
    {{- toYaml (.Values.tmpVolume | default dict) | nindent 4 }}
{{- end }}

{{/* ---------------------------------------------------------------- sidecar API

From an application chart that lists this chart as a dependency (name: lipservice,
values under `lipservice:` with `mode: sidecar`), pass the subchart context:

  metadata:
    labels:      {{ include "lipservice.sidecarPodLabels" .Subcharts.lipservice | nindent 8 }}
    annotations: {{ include "lipservice.sidecarPodAnnotations" .Subcharts.lipservice | nindent 8 }}
  spec:
    initContainers:   # sidecar.native: true (Kubernetes >= 1.29); else under containers:
      {{ include "lipservice.sidecarContainer" .Subcharts.lipservice | nindent 8 }}
    volumes:
      {{ include "lipservice.sidecarVolumes" .Subcharts.lipservice | nindent 8 }}

and point the application at it: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318.
*/}}
{{- define "lipservice.sidecarContainer" -}}
{{- include "lipservice.validate" . }}
{{- include "lipservice.container" . }}
{{- end }}

{{- define "lipservice.sidecarVolumes" -}}
{{- include "lipservice.volumes" . }}
{{- end }}

{{- define "lipservice.sidecarPodAnnotations" -}}
{{- include "lipservice.podAnnotations" . }}
{{- end }}

{{/* The label a PodMonitor (metrics.podMonitor) selects sidecar pods by. */}}
{{- define "lipservice.sidecarPodLabels" -}}
lipservice/sidecar: {{ include "lipservice.fullname" . }}
{{- end }}

{{/* Environment: secrets by reference (optional keys), POSTHOG_HOST, then `env`. */}}
{{- define "lipservice.env" -}}
{{- $env := list }}
{{- if .Values.existingSecret }}
{{- range $name, $key := .Values.secretKeys }}
{{- if $key }}
{{- $ref := dict "name" $.Values.existingSecret "key" $key "optional" true }}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.posthog.host }}
{{- $env = append $env (dict "name" "POSTHOG_HOST" "value" .) }}
{{- end }}
{{- $env = concat $env (.Values.env | default list) }}
{{- if $env }}
{{- toYaml $env }}
{{- end }}
{{- end }}
