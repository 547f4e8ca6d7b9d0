{{- define "tuneloop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tuneloop.labels" -}}
app.kubernetes.io/name: tuneloop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator") */}}
{{- define "tuneloop.selector" -}}
app.kubernetes.io/name: tuneloop
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tuneloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tuneloop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.image). global.imageRegistry replaces the registry. */}}
{{- define "tuneloop.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .image.registry | trimSuffix "/" -}}
{{- $reference := printf "%s/%s" $registry .image.repository -}}
{{- if .image.tag }}{{ $reference = printf "%s:%s" $reference .image.tag }}{{ end -}}
{{- if .image.digest }}{{ $reference = printf "%s@%s" $reference .image.digest }}{{ end -}}
{{- $reference -}}
{{- end -}}

{{- define "tuneloop.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod Security "restricted": the pod's part. */}}
{{- define "tuneloop.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.operator.runAsUser }}
  runAsGroup: {{ .Values.operator.runAsUser }}
  fsGroup: {{ .Values.operator.runAsUser }}
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Pod Security "restricted": each container's part. */}}
{{- define "tuneloop.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: {{ .Values.operator.runAsUser }}
  runAsGroup: {{ .Values.operator.runAsUser }}
  capabilities: {drop: [ALL]}
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "tuneloop.mlflowUri" -}}
{{- if .Values.mlflow.bundled.enabled -}}
{{- printf "http://%s-mlflow.%s.svc:%d" (include "tuneloop.fullname" .) .Release.Namespace (int .Values.mlflow.bundled.port) -}}
{{- else -}}
{{- .Values.mlflow.trackingUri -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose workload pods get NetworkPolicies. */}}
{{- define "tuneloop.workloadNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.workloadNamespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson $namespaces -}}
{{- end -}}

{{/* NetworkPolicy egress rule: (dict "to" PEERS "ports" PORTS); nothing when PEERS is empty. */}}
{{- define "tuneloop.egressRule" -}}
{{- if .to }}
- to:
{{- toYaml .to | nindent 4 }}
  ports:
{{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tuneloop.dnsEgress" -}}
- to:
{{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/* A duration such as 90s, 30m, 2h or 7d, in seconds. */}}
{{- define "tuneloop.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 -}}
{{- $unit := regexFind "[smhd]$" . -}}
{{- mul (trimSuffix $unit . | int) (get $units $unit) -}}
{{- end -}}
