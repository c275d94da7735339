//! Registry client (OCI distribution protocol).
