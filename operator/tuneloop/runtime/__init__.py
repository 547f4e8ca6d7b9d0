"""Where workloads run: this machine (local) or a Kubernetes cluster."""
