{{- define "ope.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ope.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ope.labels" -}}
{{ include "ope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The exporter's config.yaml: as given, or (sidecar) with the one local server. */}}
{{- define "ope.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if eq .Values.mode "sidecar" -}}
{{- $_ := unset $config "server_discovery" -}}
{{- $_ := set $config "servers" (list (dict "name" .Values.sidecar.serverName "url" "http://127.0.0.1:11434" "models" .Values.sidecar.models)) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "ope.checkMode" -}}
{{- if not (has .Values.mode (list "central" "sidecar")) -}}
{{- fail (printf "mode must be central or sidecar, not %q" .Values.mode) -}}
{{- end -}}
{{- if not (and (or (kindIs "float64" .Values.shards) (kindIs "int64" .Values.shards)) (ge (int .Values.shards) 1)) -}}
{{- fail "shards must be an integer >= 1" -}}
{{- end -}}
{{- end -}}

{{/* The exporter container; `shard` is true in central mode. */}}
{{- define "ope.container" -}}
- name: exporter
  image: {{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - --config.file=/etc/ollama-pull-exporter/config.yaml
    - --web.listen-address=:{{ .Values.port }}
    - --storage.path=/var/lib/ollama-pull-exporter/state.db
    - --log.level={{ .Values.logLevel }}
    - --log.format={{ .Values.logFormat }}
    {{- if eq .Values.mode "central" }}
    - --shard=auto
    - --total-shards={{ int .Values.shards }}
    {{- end }}
    {{- range .Values.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- with .Values.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ .Values.port }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /-/healthy
      port: metrics
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /-/ready
      port: metrics
    periodSeconds: 5
    timeoutSeconds: 5
    failureThreshold: 2
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- /* also on the container: in sidecar mode the pod is Ollama's, which runs as root */}}
    {{- $user := pick .Values.podSecurityContext "runAsNonRoot" "runAsUser" "runAsGroup" "seccompProfile" }}
    {{- toYaml (merge (deepCopy .Values.securityContext) $user) | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/ollama-pull-exporter
      readOnly: true
    - name: state
      mountPath: /var/lib/ollama-pull-exporter
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{- define "ope.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
