{{- define "failure-predictor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "failure-predictor.fullname" -}}
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

{{- define "failure-predictor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "failure-predictor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "failure-predictor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "failure-predictor.labels" -}}
helm.sh/chart: {{ include "failure-predictor.chart" . }}
{{ include "failure-predictor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: failure-predictor
{{- end }}

{{- define "failure-predictor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "failure-predictor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "failure-predictor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the Prometheus credentials are mounted. */}}
{{- define "failure-predictor.secretDir" -}}/etc/failure-predictor/secrets{{- end }}

{{/* Name of the Secret with Prometheus credentials, empty when there is none. */}}
{{- define "failure-predictor.secretName" -}}
{{- $p := .Values.prometheus }}
{{- if $p.existingSecret.name }}
{{- $p.existingSecret.name }}
{{- else if or $p.bearerToken $p.basicAuth.username $p.ca }}
{{- include "failure-predictor.fullname" . }}
{{- end }}
{{- end }}

{{/* Whether models come from a volume rather than the image. */}}
{{- define "failure-predictor.modelVolume" -}}
{{- if or .Values.model.persistence.enabled .Values.model.existingVolume }}true{{ end }}
{{- end }}

{{- define "failure-predictor.claimName" -}}
{{- default (printf "%s-models" (include "failure-predictor.fullname" .)) .Values.model.persistence.existingClaim }}
{{- end }}

{{/* The daemon's config file: the user's config plus what the chart manages. */}}
{{- define "failure-predictor.config" -}}
{{- $p := .Values.prometheus }}
{{- $dir := include "failure-predictor.secretDir" . }}
{{- $prom := dict "url" $p.url }}
{{- if $p.headers }}{{- $_ := set $prom "headers" $p.headers }}{{- end }}
{{- if $p.insecureSkipVerify }}{{- $_ := set $prom "insecure_skip_verify" true }}{{- end }}
{{- if $p.existingSecret.name }}
{{- $s := $p.existingSecret }}
{{- if $s.bearerTokenKey }}{{- $_ := set $prom "bearer_token_file" (printf "%s/%s" $dir $s.bearerTokenKey) }}{{- end }}
{{- if $s.basicAuthPasswordKey }}{{- $_ := set $prom "basic_auth" (dict "username" $s.basicAuthUsername "password_file" (printf "%s/%s" $dir $s.basicAuthPasswordKey)) }}{{- end }}
{{- if $s.caKey }}{{- $_ := set $prom "ca_file" (printf "%s/%s" $dir $s.caKey) }}{{- end }}
{{- else }}
{{- if $p.bearerToken }}{{- $_ := set $prom "bearer_token_file" (printf "%s/bearer-token" $dir) }}{{- end }}
{{- if $p.basicAuth.username }}{{- $_ := set $prom "basic_auth" (dict "username" $p.basicAuth.username "password_file" (printf "%s/basic-auth-password" $dir)) }}{{- end }}
{{- if $p.ca }}{{- $_ := set $prom "ca_file" (printf "%s/ca.crt" $dir) }}{{- end }}
{{- end }}
{{- $modelPath := .Values.model.bundledPath }}
{{- if include "failure-predictor.modelVolume" . }}{{- $modelPath = .Values.model.mountPath }}{{- end }}
{{- $shard := dict "index" 0 "count" (int .Values.shards) }}
{{- if .Values.shardBy }}{{- $_ := set $shard "by" .Values.shardBy }}{{- end }}
{{- $managed := dict "prometheus" $prom "listen" (dict "address" "0.0.0.0" "port" (int .Values.containerPort)) "shard" $shard }}
{{- if $modelPath }}{{- $_ := set $managed "model" (dict "path" $modelPath) }}{{- end }}
{{- $api := dict }}
{{- if .Values.api.tokenSecret.name }}{{- $_ := set $api "token_file" (printf "%s/token" (include "failure-predictor.apiDir" .)) }}{{- end }}
{{- if .Values.api.tlsSecret }}
{{- $_ := set $api "tls_cert_file" (printf "%s/tls.crt" (include "failure-predictor.tlsDir" .)) }}
{{- $_ := set $api "tls_key_file" (printf "%s/tls.key" (include "failure-predictor.tlsDir" .)) }}
{{- end }}
{{- if .Values.api.protectMetrics }}
{{- if not .Values.api.tokenSecret.name }}{{- fail "api.protectMetrics needs api.tokenSecret.name" }}{{- end }}
{{- $_ := set $api "protect_metrics" true }}
{{- end }}
{{- if $api }}{{- $_ := set $managed "api" $api }}{{- end }}
{{- toYaml (merge $managed (deepCopy .Values.config)) }}
{{- end }}

{{/* Where the API token and the TLS certificate are mounted. */}}
{{- define "failure-predictor.apiDir" -}}/etc/failure-predictor/api{{- end }}
{{- define "failure-predictor.tlsDir" -}}/etc/failure-predictor/tls{{- end }}

{{/* http or https: how the daemon serves, so how Prometheus, probes and helm test reach it. */}}
{{- define "failure-predictor.scheme" -}}
{{- if .Values.api.tlsSecret }}https{{ else }}http{{ end }}
{{- end }}

{{/* The labels kube-prometheus-stack selects monitors and rules by, plus the object's own. */}}
{{- define "failure-predictor.monitorLabels" -}}
{{- include "failure-predictor.labels" .root }}
{{- with .root.Values.releaseLabel }}
release: {{ . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* One scrape endpoint, shared by the ServiceMonitor and the PodMonitor. */}}
{{- define "failure-predictor.scrapeEndpoint" -}}
{{- $sm := .Values.serviceMonitor }}
port: http
path: /metrics
scheme: {{ default (include "failure-predictor.scheme" .) $sm.scheme }}
interval: {{ $sm.interval }}
scrapeTimeout: {{ $sm.scrapeTimeout }}
honorLabels: {{ $sm.honorLabels }}
{{- if $sm.tlsConfig }}
tlsConfig:
  {{- toYaml $sm.tlsConfig | nindent 2 }}
{{- else if .Values.api.tlsSecret }}
tlsConfig:
  ca:
    secret:
      name: {{ .Values.api.tlsSecret }}
      key: ca.crt
  serverName: {{ include "failure-predictor.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}
{{- if $sm.authorization }}
authorization:
  {{- toYaml $sm.authorization | nindent 2 }}
{{- else if .Values.api.protectMetrics }}
authorization:
  type: Bearer
  credentials:
    name: {{ .Values.api.tokenSecret.name }}
    key: {{ .Values.api.tokenSecret.key }}
{{- end }}
{{- with $sm.relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $sm.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A probe of `path` from inside the pod, with the API token (api.protectMetrics). */}}
{{- define "failure-predictor.execProbe" -}}
exec:
  command:
    - python
    - -c
    - |
      import ssl, sys, urllib.request
      token = open("{{ include "failure-predictor.apiDir" .root }}/token").read().strip()
      request = urllib.request.Request("{{ include "failure-predictor.scheme" .root }}://127.0.0.1:{{ .root.Values.containerPort }}{{ .path }}", headers={"Authorization": "Bearer " + token})
      context = ssl._create_unverified_context()  # loopback to itself: the certificate names the Service
      sys.exit(0 if urllib.request.urlopen(request, timeout=4, context=context).status == 200 else 1)
{{- end }}
