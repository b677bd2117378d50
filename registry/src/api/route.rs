//! Parses a `/v2/...` request path into a typed [`Endpoint`].
//!
//! Repository names contain slashes, so the path is matched from its end:
//! the trailing segments (`manifests/<ref>`, `blobs/uploads/<id>`, ...)
//! decide the endpoint and everything before them is the name, which must
//! pass [`RepoName::parse`]. The raw (still percent-encoded) path is used:
//! `%` is not allowed in names, so encoded dots or slashes never sneak in.

use crate::name::RepoName;

/// A registry API endpoint, method not yet considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: RepoName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: RepoName, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    Uploads { name: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: RepoName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path is no registry endpoint.
    NotFound,
    /// The path is an endpoint, but the repository name is invalid.
    NameInvalid,
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Endpoint, RouteError> {
    if rest.is_empty() {
        return Ok(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, RouteError> {
        if k == 0 {
            return Err(RouteError::NotFound);
        }
        RepoName::parse(&segs[..k].join("/")).map_err(|_| RouteError::NameInvalid)
    };
    let tail = |k: usize| &segs[n - k..];
    if n >= 3 && tail(2) == ["tags", "list"] {
        return Ok(Endpoint::Tags { name: name(n - 2)? });
    }
    if n >= 4 && tail(3) == ["blobs", "uploads", ""] {
        return Ok(Endpoint::Uploads { name: name(n - 3)? });
    }
    if n >= 3 && tail(2) == ["blobs", "uploads"] {
        return Ok(Endpoint::Uploads { name: name(n - 2)? });
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        return Ok(Endpoint::Upload {
            name: name(n - 3)?,
            id: segs[n - 1].to_owned(),
        });
    }
    if n >= 3 && !segs[n - 1].is_empty() {
        let last = segs[n - 1].to_owned();
        match segs[n - 2] {
            "manifests" => {
                return Ok(Endpoint::Manifest {
                    name: name(n - 2)?,
                    reference: last,
                });
            }
            "blobs" => {
                return Ok(Endpoint::Blob {
                    name: name(n - 2)?,
                    digest: last,
                });
            }
            "referrers" => {
                return Ok(Endpoint::Referrers {
                    name: name(n - 2)?,
                    digest: last,
                });
            }
            _ => {}
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse(""), Ok(Endpoint::Base));
        assert_eq!(parse("_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(
            parse("a/b/tags/list"),
            Ok(Endpoint::Tags { name: n("a/b") })
        );
        assert_eq!(
            parse("a/manifests/latest"),
            Ok(Endpoint::Manifest {
                name: n("a"),
                reference: "latest".into()
            })
        );
        assert_eq!(
            parse("x/y/z/blobs/sha256:abc"),
            Ok(Endpoint::Blob {
                name: n("x/y/z"),
                digest: "sha256:abc".into()
            })
        );
        assert_eq!(
            parse("a/blobs/uploads/"),
            Ok(Endpoint::Uploads { name: n("a") })
        );
        assert_eq!(
            parse("a/blobs/uploads"),
            Ok(Endpoint::Uploads { name: n("a") })
        );
        assert_eq!(
            parse("a/b/blobs/uploads/123"),
            Ok(Endpoint::Upload {
                name: n("a/b"),
                id: "123".into()
            })
        );
        assert_eq!(
            parse("a/referrers/sha256:abc"),
            Ok(Endpoint::Referrers {
                name: n("a"),
                digest: "sha256:abc".into()
            })
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            parse("blobs/manifests/manifests/v1"),
            Ok(Endpoint::Manifest {
                name: n("blobs/manifests"),
                reference: "v1".into()
            })
        );
    }

    #[test]
    fn hostile_paths() {
        for p in [
            "../manifests/x",
            "a/../b/manifests/x",
            "%2e%2e/manifests/x",
            "a/%2e%2e/blobs/sha256:x",
            "/etc/manifests/x",
            "A/manifests/x",
            "a//b/tags/list",
            "_uploads/blobs/uploads/",
        ] {
            assert_eq!(parse(p), Err(RouteError::NameInvalid), "{p}");
        }
        for p in [
            "a",
            "a/b",
            "manifests/x",
            "a/unknown/x",
            "a/manifests/",
            "tags/list",
        ] {
            assert_eq!(parse(p), Err(RouteError::NotFound), "{p}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_names_are_valid(p in "[a-z0-9._%/:-]{0,60}") {
            if let Ok(ep) = parse(&p) {
                let name = match ep {
                    Endpoint::Base | Endpoint::Catalog => None,
                    Endpoint::Tags { name } | Endpoint::Uploads { name } => Some(name),
                    Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. }
                    | Endpoint::Upload { name, .. } | Endpoint::Referrers { name, .. } => Some(name),
                };
                if let Some(name) = name {
                    prop_assert!(RepoName::parse(name.as_str()).is_ok());
                    prop_assert!(!name.as_str().contains(".."));
                }
            }
        }

        #[test]
        fn roundtrip(name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,4}", tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,10}") {
            let ep = parse(&format!("{name}/manifests/{tag}")).unwrap();
            prop_assert_eq!(ep, Endpoint::Manifest { name: n(&name), reference: tag });
        }
    }
}
