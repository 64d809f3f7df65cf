{{/* The prefix of every object name: the release name when it contains "confgate". */}}
{{- define "confgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "confgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "confgate.labels" -}}
app.kubernetes.io/name: {{ include "confgate.name" . }}
app.kubernetes.io/part-of: confgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The pods' labels, and the selector of the Deployment, Service, PDB and spread rules. */}}
{{- define "confgate.selector" -}}
app.kubernetes.io/name: {{ include "confgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "confgate.serviceAccount" -}}{{ include "confgate.fullname" . }}{{- end -}}

{{- define "confgate.tlsSecret" -}}
{{- default (printf "%s-tls" (include "confgate.fullname" .)) .Values.certificates.secretName -}}
{{- end -}}

{{- define "confgate.priorityClassName" -}}
{{- if .Values.priorityClass.create -}}
{{- default (printf "%s-critical" (include "confgate.fullname" .)) .Values.priorityClass.name -}}
{{- else -}}
{{- .Values.priorityClass.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the shipped policies exclude: the values, plus the release namespace. */}}
{{- define "confgate.excludeNamespaces" -}}
{{- $list := .Values.policies.excludeNamespaces -}}
{{- if not (has .Release.Namespace $list) -}}
{{- $list = append $list .Release.Namespace -}}
{{- end -}}
{{- printf "[%s]" (join ", " $list) -}}
{{- end -}}

{{/* A ServiceAccount subject. */}}
{{- define "confgate.subject" -}}
subjects:
- kind: ServiceAccount
  name: {{ include "confgate.serviceAccount" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* An argument only when the name differs from confgate's default (so the default install
renders exactly like deploy/). */}}
{{- define "confgate.nameArg" -}}
{{- $fullname := include "confgate.fullname" .root -}}
{{- $value := printf "%s%s" $fullname .suffix -}}
{{- if ne $value (printf "confgate%s" .suffix) }}
        - --{{ .flag }}={{ $value }}
{{- end -}}
{{- end -}}
