//! The contract between berth's token service and its registry, as the
//! Docker token-authentication specification defines it: scopes a client
//! asks for (`repository:library/ubuntu:pull,push`), the access a token
//! grants, and the JWT claims that carry it.
//!
//! Both `berth-identity` (which issues tokens) and `berth-registry` (which
//! verifies them) use these types; neither depends on the other.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An action on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
    /// `*`: every action (catalog access, or all of pull, push and delete).
    All,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pull" => Action::Pull,
            "push" => Action::Push,
            "delete" => Action::Delete,
            "*" => Action::All,
            _ => return None,
        })
    }
}

/// Why a scope string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("scope {0:?} is not of the form type:name:actions")]
    Malformed(String),
}

/// One requested scope: `type:name:action[,action...]`. The name may
/// contain `:` only in its last part for `registry:catalog:*`; repository
/// names never contain `:`. Unknown actions are dropped (the spec says a
/// token service grants the intersection of what is asked and allowed).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: BTreeSet<Action>,
}

impl Scope {
    /// Parses one scope. A client may send several in one parameter,
    /// separated by spaces: see [`Scope::parse_list`].
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let bad = || ScopeError::Malformed(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        if kind.is_empty() || name.is_empty() {
            return Err(bad());
        }
        let actions = actions
            .split(',')
            .filter_map(|a| Action::parse(a.trim()))
            .collect();
        Ok(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// Parses a space-separated list of scopes.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, ScopeError> {
        s.split_whitespace().map(Scope::parse).collect()
    }

    pub fn repository(name: &str, actions: &[Action]) -> Scope {
        Scope {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().copied().collect(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        write!(f, "{}:{}:{}", self.kind, self.name, actions.join(","))
    }
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Whether this entry grants `action` on `kind:name` (`*` grants all).
    pub fn allows(&self, kind: &str, name: &str, action: Action) -> bool {
        self.kind == kind
            && self.name == name
            && self
                .actions
                .iter()
                .any(|a| a == "*" || a == action.as_str())
    }
}

impl From<&Scope> for Access {
    fn from(s: &Scope) -> Access {
        Access {
            kind: s.kind.clone(),
            name: s.name.clone(),
            actions: s.actions.iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }
}

/// The claims of a berth registry token (Docker token-auth JWT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// A JSON string: Docker Distribution 2.8 refuses an array.
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    /// Whether the token grants `action` on repository `name`.
    pub fn allows_repository(&self, name: &str, action: Action) -> bool {
        self.access
            .iter()
            .any(|a| a.allows("repository", name, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_scopes() {
        let s = Scope::parse("repository:library/ubuntu:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "library/ubuntu");
        assert_eq!(s.actions, [Action::Pull, Action::Push].into());
        let c = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!((c.kind.as_str(), c.name.as_str()), ("registry", "catalog"));
        assert_eq!(c.actions, [Action::All].into());
        // Unknown actions are dropped, not an error.
        let u = Scope::parse("repository:a:pull,frobnicate").unwrap();
        assert_eq!(u.actions, [Action::Pull].into());
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
        let list = Scope::parse_list("repository:a:pull  repository:b:push").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn access_and_claims() {
        let claims = Claims {
            iss: "i".into(),
            sub: "alice".into(),
            aud: "s".into(),
            exp: 2,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            access: vec![
                Access::from(&Scope::repository(
                    "alice/app",
                    &[Action::Pull, Action::Push],
                )),
                Access {
                    kind: "repository".into(),
                    name: "all".into(),
                    actions: vec!["*".into()],
                },
            ],
        };
        assert!(claims.allows_repository("alice/app", Action::Push));
        assert!(!claims.allows_repository("alice/app", Action::Delete));
        assert!(!claims.allows_repository("alice/other", Action::Pull));
        assert!(claims.allows_repository("all", Action::Delete));
        let json = serde_json::to_value(&claims).unwrap();
        assert_eq!(json["aud"], "s");
        assert_eq!(json["access"][0]["type"], "repository");
        assert_eq!(
            json["access"][0]["actions"],
            serde_json::json!(["pull", "push"])
        );
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", p in any::<bool>(), q in any::<bool>()) {
            let mut actions = vec![];
            if p { actions.push(Action::Pull) }
            if q { actions.push(Action::Push) }
            let s = Scope::repository(&name, &actions);
            prop_assert_eq!(Scope::parse(&s.to_string()).unwrap(), s);
        }
    }
}
