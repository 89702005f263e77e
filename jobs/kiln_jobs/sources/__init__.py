"""Where models, data and artifacts come from and go to: URIs, S3, model and data loaders."""
