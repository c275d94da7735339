//! CRI container config + image config + pod → OCI runtime spec (pure; see `docs/containers.md`).
