"""Kiln's real test cluster: Go-built control plane, kwok nodes, pod fates, local executor."""
