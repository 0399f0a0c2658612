{{- define "tlpipe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tlpipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tlpipe.mlflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow
{{- end -}}

{{- define "tlpipe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tlpipe.mlflow.name" -}}
{{ include "tlpipe.fullname" . }}-mlflow
{{- end -}}

{{/* The S3 Secret every consumer reads: the user's or the chart's. */}}
{{- define "tlpipe.s3Secret" -}}
{{ .Values.s3.existingSecret | default .Values.pipelineSecrets.s3SecretName }}
{{- end -}}

{{- define "tlpipe.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
http://{{ include "tlpipe.mlflow.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.mlflow.service.port }}
{{- else -}}
{{ required "pipelineSecrets.trackingUri is required when mlflow.enabled is false" .Values.pipelineSecrets.trackingUri }}
{{- end -}}
{{- end -}}

{{- define "tlpipe.backendSecret" -}}
{{ .Values.mlflow.backendStore.existingSecret | default (printf "%s-backend" (include "tlpipe.mlflow.name" .)) }}
{{- end -}}

{{- define "tlpipe.usesBackendSecret" -}}
{{- if or .Values.mlflow.backendStore.existingSecret .Values.mlflow.backendStore.uri -}}true{{- end -}}
{{- end -}}
