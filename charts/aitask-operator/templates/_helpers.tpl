{{/* Chart name, truncated to 63 characters. */}}
{{- define "aitask.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-aitask-operator, or the release name when it already contains the chart name. */}}
{{- define "aitask.fullname" -}}
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

{{- define "aitask.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "aitask.labels" -}}
helm.sh/chart: {{ include "aitask.chart" . }}
app.kubernetes.io/name: {{ include "aitask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aitask-operator
{{- end }}

{{/* Selector of the operator pods. */}}
{{- define "aitask.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aitask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector of the GPU agent pods. */}}
{{- define "aitask.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "aitask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gpu-agent
{{- end }}

{{- define "aitask.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aitask.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aitask.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-agent" (include "aitask.fullname" .)) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aitask.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "aitask.agentImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.agent.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.agent.image.tag) }}
{{- end }}
