"""Suite-wide pytest configuration."""

# The real test cluster's fixtures (kube, namespace, restricted_namespace, make_namespace).
pytest_plugins = ["tests.cluster.fixtures"]
