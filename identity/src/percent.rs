//! Percent-encoding of the ids that both Keystone clients (the token
//! service's, [`crate::authn::keystone`], and the caller's,
//! [`crate::openstack::client`]) put in request paths and queries.

/// Percent-encodes a path segment or query value: everything but the
/// unreserved characters of RFC 3986 (Keystone ids are hex in practice).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encoding() {
        assert_eq!(encode("abc-123_x.y~"), "abc-123_x.y~");
        assert_eq!(encode("a b&c=d/"), "a%20b%26c%3Dd%2F");
    }
}
