//! The OCI distribution registry served by the server process, backed by the artifact store.
