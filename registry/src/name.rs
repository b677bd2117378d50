//! Repository names and tags, validated against the OCI distribution-spec
//! grammar before anything else sees them.
//!
//! A [`RepoName`] is a sequence of `/`-separated components, each matching
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. No component can be empty, start with
//! a dot or underscore, or contain `%`, so `..`, `%2e%2e`, absolute paths and
//! the store's own `_`-prefixed directories can never be named. A [`Tag`]
//! matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` and is a single path component.

use std::fmt;

/// Longest repository name accepted (Distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A validated tag.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid repository name")]
    Repository,
    #[error("invalid tag")]
    Tag,
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &[u8]) -> bool {
    let mut i = 0;
    let n = c.len();
    loop {
        let start = i;
        while i < n && is_alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == n {
            return true;
        }
        // separator: '.', '_', '__', or one or more '-'
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(NameError::Repository);
        }
        if s.split('/').all(|c| valid_component(c.as_bytes())) {
            Ok(RepoName(s.to_owned()))
        } else {
            Err(NameError::Repository)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's components, each a safe file-name.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::Tag)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repository_names() {
        for good in [
            "a",
            "library/ubuntu",
            "a/b/c/d",
            "my-app",
            "my--app",
            "a.b",
            "a_b",
            "a__b",
            "0",
            "alice/app-1.2_x",
        ] {
            assert!(RepoName::parse(good).is_ok(), "{good} refused");
        }
        for bad in [
            "",
            "..",
            "a/..",
            "../etc",
            "/abs",
            "a/",
            "a//b",
            "%2e%2e",
            "a/%2e%2e/b",
            "Upper",
            "a/_layers",
            "_uploads",
            ".hidden",
            "a..b",
            "a___b",
            "a-",
            "-a",
            "a.",
            "a b",
            "a\\b",
            "a\0b",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        for good in ["latest", "v1.0", "_x", "A-b.c_d", &"a".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good} refused");
        }
        for bad in ["", ".", "..", "-a", ".a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_safe_paths(s in "[a-z0-9._/%-]{1,40}") {
            if let Ok(n) = RepoName::parse(&s) {
                for c in n.components() {
                    prop_assert!(!c.is_empty());
                    prop_assert!(!c.starts_with('.') && !c.starts_with('_'));
                    prop_assert!(!c.contains('%'));
                }
            }
        }

        #[test]
        fn grammar_names_are_accepted(s in "[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,3}(/[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,2}){0,3}") {
            prop_assert!(RepoName::parse(&s).is_ok());
        }

        #[test]
        fn accepted_tags_are_single_components(s in "\\PC{0,20}") {
            if let Ok(t) = Tag::parse(&s) {
                prop_assert!(!t.as_str().contains('/'));
                prop_assert!(!t.as_str().starts_with('.'));
            }
        }
    }
}
