// Third-party CRDs the project's manifests and docs use (Argo CD's
// Application and AppProject, the Prometheus Operator's ServiceMonitor),
// taken from the projects' own modules at these pinned versions so that
// `kubectl apply --dry-run=server --validate=strict` checks those objects
// against the real schemas. Only downloaded, never built (world/kube/build).
module votingstack.dev/world/kube/crds

go 1.24.0

require (
	github.com/argoproj/argo-cd/v2 v2.14.21
	github.com/prometheus-operator/prometheus-operator v0.85.0
)
