{{/* The release's full name, within 63 characters. */}}
{{- define "session-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "session-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "session-operator.labels" -}}
{{ include "session-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "session-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "session-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "session-operator.webhookService" -}}
{{- printf "%s-webhook" (include "session-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "session-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "session-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
