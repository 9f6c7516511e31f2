{{/*
Chart name, truncated to the 63 characters DNS labels allow.
*/}}
{{- define "ftd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: RELEASE-ftd, or RELEASE when it already contains the chart
name. Truncated to 40 characters so that suffixes such as "-coordinator-headless" and the
StatefulSet pod ordinals still fit in 63.
*/}}
{{- define "ftd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ftd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "ftd.labels" -}}
helm.sh/chart: {{ include "ftd.chart" . }}
{{ include "ftd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ftd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ftd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ftd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ftd.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "ftd.fullname" .) }}
{{- end }}

{{- define "ftd.worker.fullname" -}}
{{- printf "%s-worker" (include "ftd.fullname" .) }}
{{- end }}

{{- define "ftd.coordinator.selectorLabels" -}}
{{ include "ftd.selectorLabels" . }}
app.kubernetes.io/component: coordinator
{{- end }}

{{- define "ftd.worker.selectorLabels" -}}
{{ include "ftd.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "ftd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ftd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: a digest pins it; otherwise the tag, defaulting to the chart's appVersion.
*/}}
{{- define "ftd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the tokens file ("tokens") and the worker token ("worker-token").
*/}}
{{- define "ftd.tokensSecretName" -}}
{{- default (printf "%s-tokens" (include "ftd.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "ftd.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "ftd.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/*
The coordinator's gRPC address as workers dial it (the Service's cluster DNS name).
*/}}
{{- define "ftd.coordinator.grpcAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "ftd.coordinator.fullname" .) .Release.Namespace .Values.worker.clusterDomain (int .Values.coordinator.grpcPort) }}
{{- end }}

{{/*
"true" when ServiceMonitor/PodMonitor objects can be created: the Prometheus Operator API is
served by the cluster, or the user says it is (offline rendering cannot discover it).
*/}}
{{- define "ftd.prometheusOperatorAvailable" -}}
{{- if or (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") .Values.metrics.assumePrometheusOperator -}}
true
{{- end }}
{{- end }}

{{/*
Container securityContext from .Values.securityContext; $extraCaps are added capabilities
(IPC_LOCK for RDMA workers). Usage: include "ftd.containerSecurityContext" (list . $extraCaps)
*/}}
{{- define "ftd.containerSecurityContext" -}}
{{- $root := index . 0 }}
{{- $extraCaps := index . 1 }}
{{- $ctx := deepCopy $root.Values.securityContext }}
{{- if $extraCaps }}
{{- $caps := default dict $ctx.capabilities }}
{{- $_ := set $caps "add" $extraCaps }}
{{- $_ := set $ctx "capabilities" $caps }}
{{- end }}
{{- toYaml $ctx }}
{{- end }}

{{/*
Cross-field checks that values.schema.json cannot express.
*/}}
{{- define "ftd.validate" -}}
{{- if eq (int .Values.coordinator.grpcPort) (int .Values.coordinator.httpPort) }}
{{- fail "coordinator.grpcPort and coordinator.httpPort must differ" }}
{{- end }}
{{- if and .Values.worker.enabled (or (eq (int .Values.worker.rendezvousPort) (int .Values.coordinator.grpcPort)) (eq (int .Values.worker.rendezvousPort) (int .Values.coordinator.httpPort))) }}
{{- fail "worker.rendezvousPort must differ from the coordinator's ports" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $t := .Values.auth.tokens }}
{{- if eq $t.token $.Values.auth.workerToken }}
{{- fail (printf "auth.tokens[%d].token equals auth.workerToken: give workers their own token" $i) }}
{{- end }}
{{- if hasKey $seen $t.token }}
{{- fail (printf "auth.tokens[%d].token repeats auth.tokens[%v].token: tokens must be unique" $i (get $seen $t.token)) }}
{{- end }}
{{- $_ := set $seen $t.token $i }}
{{- end }}
{{- end }}
