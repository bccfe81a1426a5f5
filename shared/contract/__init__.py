"""The public event contract v1 in code: topics, the CloudEvents envelope and every payload."""
