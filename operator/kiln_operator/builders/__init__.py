"""Pure functions that return the Kubernetes objects Kiln wants to exist."""
