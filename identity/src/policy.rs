//! Namespaces and rules: an [`crate::authn::Identity`] (or nobody) times the
//! requested scopes gives the granted access. Pure and exhaustively tested;
//! no I/O. To be written.
