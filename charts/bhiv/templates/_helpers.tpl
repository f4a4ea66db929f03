{{/* Chart name. */}}
{{- define "bhiv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name the chart owns (modules keep their service names). */}}
{{- define "bhiv.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bhiv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries; pass (dict "ctx" $ "component" "x"). */}}
{{- define "bhiv.labels" -}}
helm.sh/chart: {{ include "bhiv.chart" .ctx }}
app.kubernetes.io/name: {{ default (include "bhiv.name" .ctx) .name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ include "bhiv.tag" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bhiv-core
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator's pods: name + instance only (selectors are immutable).
     Its own name, so it can never select a module's pods (name=bhiv, instance=<module>). */}}
{{- define "bhiv.operator.labels" -}}
{{ include "bhiv.labels" (dict "ctx" . "component" "operator" "name" (printf "%s-operator" (include "bhiv.name" .))) }}
{{- end -}}

{{- define "bhiv.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bhiv.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bhiv.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "bhiv.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "bhiv.tag" .) -}}
{{- end -}}

{{- define "bhiv.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "bhiv.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bhiv.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "bhiv.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "bhiv.databaseSecretName" -}}
{{- default (printf "%s-database" (include "bhiv.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{/* The stages that have an enabled service, each a list of the enabled ones:
     {"stages": [[...], ...]} as JSON. */}}
{{- define "bhiv.stages" -}}
{{- $stages := list -}}
{{- range $stage := include "bhiv.seedStages" . | fromJsonArray -}}
{{- $enabled := list -}}
{{- range $name := $stage -}}
{{- if (index $.Values.services $name).enabled -}}
{{- $enabled = append $enabled $name -}}
{{- end -}}
{{- end -}}
{{- if $enabled -}}
{{- $stages = append $stages $enabled -}}
{{- end -}}
{{- end -}}
{{- dict "stages" $stages | toJson -}}
{{- end -}}

{{/* One service's entry in the generated catalog (_catalog.tpl) as JSON: port, stage,
     database, sharedSecrets. Pass (dict "ctx" $ "name" "logistics"). */}}
{{- define "bhiv.catalogEntry" -}}
{{- index (include "bhiv.catalog" .ctx | fromJson) .name | toJson -}}
{{- end -}}

{{- define "bhiv.servicePort" -}}
{{- $svc := index .ctx.Values.services .name -}}
{{- default (int (include "bhiv.catalogEntry" . | fromJson).port) $svc.port -}}
{{- end -}}

{{/* Name of the operator's Role/ClusterRole, its binding and its (Cluster)KopfPeering:
     cluster-scoped names carry the namespace so two releases never collide. */}}
{{- define "bhiv.operator.rbacName" -}}
{{- if .Values.operator.clusterWide -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "bhiv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" (include "bhiv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The bundled PostgreSQL: its StatefulSet, Services and Secret share this name. */}}
{{- define "bhiv.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "bhiv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret with its passwords and the services' URLs: generated, or your own. */}}
{{- define "bhiv.postgresql.secretName" -}}
{{- default (include "bhiv.postgresql.fullname" .) .Values.postgresql.existingSecret -}}
{{- end -}}

{{/* Its pods: name + instance only, a name of its own (as the operator's). */}}
{{- define "bhiv.postgresql.labels" -}}
{{ include "bhiv.labels" (dict "ctx" . "component" "postgresql" "name" (printf "%s-postgresql" (include "bhiv.name" .))) }}
{{- end -}}

{{- define "bhiv.postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bhiv.name" . }}-postgresql
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A service's role and database on the bundled PostgreSQL (as `bhiv provision-databases` names them). */}}
{{- define "bhiv.postgresql.databaseName" -}}
{{- printf "bhiv_%s" (replace "-" "_" .) -}}
{{- end -}}

{{/* Where a service's database URL comes from, by precedence: "secretRef" (its own
     services.<name>.database.secretRef), "external" (database.existingSecret/urls),
     "bundled" (postgresql.enabled), or "" (SQLite in its pod; nothing for a service that
     keeps no data, such as the gateway).
     Pass (dict "ctx" $ "name" "logistics"). */}}
{{- define "bhiv.databaseSource" -}}
{{- $svc := index .ctx.Values.services .name -}}
{{- if not (include "bhiv.catalogEntry" . | fromJson).database -}}
{{- else if dig "database" "secretRef" "name" "" $svc -}}secretRef
{{- else if or .ctx.Values.database.existingSecret (hasKey .ctx.Values.database.urls .name) -}}external
{{- else if .ctx.Values.postgresql.enabled -}}bundled
{{- end -}}
{{- end -}}

{{/* The enabled services whose database is on the bundled PostgreSQL, in startup
     order: {"services": [...]} as JSON. Empty: the bundled PostgreSQL is not deployed. */}}
{{- define "bhiv.postgresql.services" -}}
{{- $services := list -}}
{{- range $stage := (include "bhiv.stages" . | fromJson).stages -}}
{{- range $name := $stage -}}
{{- if eq (include "bhiv.databaseSource" (dict "ctx" $ "name" $name)) "bundled" -}}
{{- $services = append $services $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- dict "services" $services | toJson -}}
{{- end -}}

{{- define "bhiv.credentialsSecretName" -}}
{{- default (printf "%s-credentials" (include "bhiv.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}
