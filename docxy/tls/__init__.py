"""TLS and certificates: the reloadable server context and certbot's certificates."""
