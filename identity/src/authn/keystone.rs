//! The Keystone authenticator (in progress).
