"""Pure reconcile decisions: no Kubernetes client, no kopf, no processes."""
