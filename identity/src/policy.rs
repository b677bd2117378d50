//! Namespaces and rules: an [`Identity`] (or nobody) times the requested
//! scopes gives the granted access. Pure (no I/O, no clock, no logging) and
//! exhaustively tested; [`grant`] is the only entry point.
//!
//! # Namespaces
//!
//! A repository name belongs to the namespace named by its first path
//! component. Only names of at least two components (`ns/...`) belong to a
//! namespace; a single-component name (`ubuntu`) belongs to nobody, so only
//! registry administrators have rights there. The first component is
//! resolved in this order:
//!
//! 1. `public`: the public namespace. Every authenticated identity
//!    (application credentials included) may pull; only administrators may
//!    push or delete. The name is reserved: a Keystone project called
//!    `public` gets no rights there through its roles.
//! 2. A Keystone project whose name, compared ASCII-case-insensitively
//!    (repository names are lower case; non-ASCII characters never match, so
//!    the Kelvin sign is not a `k`), equals the component. The
//!    [`ProjectDirectory`] (every project, with tags) is searched first; if it
//!    has no such project, the identity's own [`ProjectRoles`] are (a
//!    directory cached before the project was created must not hand the
//!    namespace to a same-named user). Roles are matched to the project by id,
//!    never by name. If two projects (say of different domains, or `Team`
//!    and `team`) match, the namespace is ambiguous and only administrators
//!    have rights there.
//! 3. Otherwise the personal namespace of the user whose name, compared the
//!    same way, equals the component. So a name that is both a project and a
//!    user is the project's: the user gets no owner rights there.
//!
//! # Rules
//!
//! - Registry administrators get every action on every valid repository and
//!   `registry:catalog:*`. An identity is an administrator when
//!   [`Identity::admin`] is set (the authenticator's call), when it holds a
//!   role named in [`PolicyConfig::admin_roles`] on any of its projects, or
//!   (password and refresh-token logins only) when
//!   [`PolicyConfig::admin_users`] names it. Nobody else gets catalog access.
//! - Project roles (implied roles need not be expanded; role names compare
//!   ASCII-case-insensitively): `admin` gives pull, push, delete; `member`
//!   pull and push; `reader` pull. Other roles (`_member_` included) give
//!   nothing on their own.
//! - A project tagged `registry-public` is readable by every authenticated
//!   identity, and by anonymous requests when
//!   [`PolicyConfig::anonymous_pull_public`] is set.
//! - A project tagged `registry-pull=<other>` is readable by identities with
//!   any role on `<other>` (resolved like a namespace). Sharing is not
//!   transitive, and tags compare exactly (Keystone tags are case-sensitive).
//! - A personal namespace's owner (password or refresh-token login) may pull,
//!   push and delete. Nobody else has any right there except administrators.
//! - Anonymous requests (`who == None`) get pull on `registry-public`
//!   projects when [`PolicyConfig::anonymous_pull_public`] is set, and
//!   nothing else: not `public/` (the issue says it is readable by
//!   *authenticated* users), not the catalog.
//! - Application credentials get no more than their project and roles: no
//!   personal namespace and no administrator rights through `admin_users`.
//!   They keep what every authenticated identity has (pull on `public/` and
//!   on `registry-public` projects), and pull on projects shared with their
//!   project through `registry-pull=`.
//!
//! # The grant
//!
//! The grant is the intersection of what was asked and what is allowed;
//! asking for more is not an error. In a request, `*` on a repository means
//! pull, push and delete; the grant lists the concrete actions, always in
//! the order pull, push, delete. `registry:catalog:*` is granted as `*`, and
//! only when `*` was asked. Scopes with nothing allowed are omitted (as in
//! the Docker token specification's example), as are scopes of unknown types
//! (`repository(plugin)` included), `registry` scopes other than `catalog`,
//! and invalid repository names (anything outside the OCI grammar: upper
//! case, empty components, `..`, leading or trailing `/`, more than 255
//! bytes). Several scopes for one resource are merged into one entry, placed
//! where the first of them was asked.
//!
//! # Known limitation
//!
//! Personal namespaces are keyed by user name alone: users of the same name
//! in different Keystone domains share one. Deployments with several user
//! domains should keep user names unique across them.

use std::collections::BTreeSet;

use berth_auth::{Access, Action, Scope};
use serde::Deserialize;

use crate::authn::{Identity, Method, ProjectRoles};
pub use crate::authn::{ProjectDirectory, ProjectInfo};

/// The reserved namespace every authenticated identity may pull from.
pub const PUBLIC_NAMESPACE: &str = "public";
/// Keystone project tag: every authenticated identity may pull.
pub const TAG_PUBLIC: &str = "registry-public";
/// Keystone project tag prefix: `registry-pull=<other project>` lets the
/// members of the other project pull.
pub const TAG_PULL_PREFIX: &str = "registry-pull=";
/// Longest repository name (Distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

/// Policy settings from the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Registry administrators by user: a user id, `name@domain`, or a bare
    /// user name (which matches that name in every domain). Compared
    /// exactly. Does not apply to application credentials.
    pub admin_users: Vec<String>,
    /// Keystone roles that make their holder (on any project) a registry
    /// administrator. Compared ASCII-case-insensitively.
    pub admin_roles: Vec<String>,
    /// Whether anonymous requests may pull from `registry-public` projects.
    pub anonymous_pull_public: bool,
}

/// What an identity may do in a repository: a set of pull, push, delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rights {
    pull: bool,
    push: bool,
    delete: bool,
}

impl Rights {
    const NONE: Rights = Rights {
        pull: false,
        push: false,
        delete: false,
    };
    const PULL: Rights = Rights {
        pull: true,
        push: false,
        delete: false,
    };
    const PULL_PUSH: Rights = Rights {
        pull: true,
        push: true,
        delete: false,
    };
    const ALL: Rights = Rights {
        pull: true,
        push: true,
        delete: true,
    };

    fn union(self, other: Rights) -> Rights {
        Rights {
            pull: self.pull || other.pull,
            push: self.push || other.push,
            delete: self.delete || other.delete,
        }
    }

    /// The rights a set of Keystone roles gives on their project.
    fn of_roles(roles: &BTreeSet<String>) -> Rights {
        roles.iter().fold(Rights::NONE, |acc, role| {
            let r = if role.eq_ignore_ascii_case("admin") {
                Rights::ALL
            } else if role.eq_ignore_ascii_case("member") {
                Rights::PULL_PUSH
            } else if role.eq_ignore_ascii_case("reader") {
                Rights::PULL
            } else {
                Rights::NONE
            };
            acc.union(r)
        })
    }

    /// The concrete actions of `requested` (with `*` meaning all three) that
    /// these rights allow, in canonical order.
    fn intersect(self, requested: &BTreeSet<Action>) -> Vec<Action> {
        let all = requested.contains(&Action::All);
        [
            (Action::Pull, self.pull),
            (Action::Push, self.push),
            (Action::Delete, self.delete),
        ]
        .into_iter()
        .filter(|&(action, allowed)| allowed && (all || requested.contains(&action)))
        .map(|(action, _)| action)
        .collect()
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: one component of a repository name
/// in the OCI distribution-spec grammar.
pub(crate) fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between alphanumeric runs: exactly one `.`, one or two `_`, or any
    // number of `-`; never a mix.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let sep = b[i];
        let start = i;
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let ok = match sep {
            b'.' => i - start == 1,
            b'_' => i - start <= 2,
            b'-' => true,
            _ => false,
        };
        // A separator is followed by an alphanumeric (the last byte is one,
        // so `i` is in range), never by another kind of separator.
        if !ok || !b.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// Whether `name` is a repository name in the OCI distribution-spec grammar.
/// (The registry validates names itself; this crate does not depend on it.)
pub fn valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

fn is_application_credential(who: &Identity) -> bool {
    matches!(who.method, Method::ApplicationCredential { .. })
}

/// Whether `who` is a registry administrator (see the module doc).
pub fn is_admin(who: &Identity, config: &PolicyConfig) -> bool {
    if who.admin {
        return true;
    }
    let by_role = who.projects.iter().any(|p| {
        p.roles
            .iter()
            .any(|r| config.admin_roles.iter().any(|a| a.eq_ignore_ascii_case(r)))
    });
    if by_role {
        return true;
    }
    if is_application_credential(who) {
        return false;
    }
    config.admin_users.iter().any(|u| {
        *u == who.user_id
            || *u == who.username
            || u.split_once('@')
                .is_some_and(|(name, domain)| name == who.username && domain == who.domain)
    })
}

/// A project as a namespace: its id and its sharing tags.
#[derive(Clone, Copy, Debug)]
struct ProjectRef<'a> {
    id: &'a str,
    tags: &'a [String],
}

enum Resolved<'a> {
    Project(ProjectRef<'a>),
    /// Several projects match.
    Ambiguous,
    /// No project has this name.
    None,
}

/// Finds the project called `name` (ASCII-case-insensitively): in the
/// directory, or failing that among the identity's own projects.
fn resolve_project<'a>(
    name: &str,
    who: Option<&'a Identity>,
    projects: &'a ProjectDirectory,
) -> Resolved<'a> {
    let mut found = projects
        .values()
        .filter(|p| p.name.eq_ignore_ascii_case(name));
    if let Some(p) = found.next() {
        return match found.next() {
            Some(_) => Resolved::Ambiguous,
            None => Resolved::Project(ProjectRef {
                id: &p.id,
                tags: &p.tags,
            }),
        };
    }
    let mut own = who
        .into_iter()
        .flat_map(|w| w.projects.iter())
        .filter(|p| p.name.eq_ignore_ascii_case(name));
    let Some(first) = own.next() else {
        return Resolved::None;
    };
    if own.all(|p| p.id == first.id) {
        Resolved::Project(ProjectRef {
            id: &first.id,
            tags: &[],
        })
    } else {
        Resolved::Ambiguous
    }
}

/// The roles `who` holds on the project with this id.
fn roles_on<'a>(who: &'a Identity, id: &str) -> impl Iterator<Item = &'a ProjectRoles> {
    who.projects.iter().filter(move |p| p.id == id)
}

/// What `who` may do in the namespace of project `project`.
fn project_rights(
    who: Option<&Identity>,
    project: ProjectRef<'_>,
    projects: &ProjectDirectory,
    config: &PolicyConfig,
) -> Rights {
    let public = project.tags.iter().any(|t| t == TAG_PUBLIC);
    let Some(who) = who else {
        return if public && config.anonymous_pull_public {
            Rights::PULL
        } else {
            Rights::NONE
        };
    };
    let mut rights = roles_on(who, project.id)
        .fold(Rights::NONE, |acc, p| acc.union(Rights::of_roles(&p.roles)));
    if public {
        rights = rights.union(Rights::PULL);
    }
    let shared = project
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix(TAG_PULL_PREFIX))
        .any(|other| match resolve_project(other, Some(who), projects) {
            Resolved::Project(o) => roles_on(who, o.id).any(|p| !p.roles.is_empty()),
            Resolved::Ambiguous | Resolved::None => false,
        });
    if shared {
        rights = rights.union(Rights::PULL);
    }
    rights
}

/// What `who` may do in repository `name`.
fn repository_rights(
    who: Option<&Identity>,
    projects: &ProjectDirectory,
    config: &PolicyConfig,
    name: &str,
) -> Rights {
    if !valid_repository_name(name) {
        return Rights::NONE;
    }
    if who.is_some_and(|w| is_admin(w, config)) {
        return Rights::ALL;
    }
    let Some((namespace, _)) = name.split_once('/') else {
        return Rights::NONE;
    };
    if namespace == PUBLIC_NAMESPACE {
        return if who.is_some() {
            Rights::PULL
        } else {
            Rights::NONE
        };
    }
    match resolve_project(namespace, who, projects) {
        Resolved::Project(p) => project_rights(who, p, projects, config),
        Resolved::Ambiguous => Rights::NONE,
        Resolved::None => match who {
            Some(w)
                if !is_application_credential(w) && w.username.eq_ignore_ascii_case(namespace) =>
            {
                Rights::ALL
            }
            _ => Rights::NONE,
        },
    }
}

/// The actions granted for one requested scope, as they go into the token.
fn granted_actions(
    who: Option<&Identity>,
    projects: &ProjectDirectory,
    config: &PolicyConfig,
    scope: &Scope,
) -> Vec<&'static str> {
    match scope.kind.as_str() {
        "repository" => repository_rights(who, projects, config, &scope.name)
            .intersect(&scope.actions)
            .into_iter()
            .map(Action::as_str)
            .collect(),
        "registry"
            if scope.name == "catalog"
                && scope.actions.contains(&Action::All)
                && who.is_some_and(|w| is_admin(w, config)) =>
        {
            vec![Action::All.as_str()]
        }
        _ => Vec::new(),
    }
}

/// The position of an action in the canonical order of a grant.
fn rank(action: &str) -> usize {
    ["pull", "push", "delete", "*"]
        .iter()
        .position(|a| *a == action)
        .unwrap_or(usize::MAX)
}

/// The access a token for `who` (`None`: anonymous) carries when `requested`
/// was asked: the intersection of what was asked and what is allowed, with
/// scopes that get nothing omitted. See the module doc for the rules.
pub fn grant(
    who: Option<&Identity>,
    projects: &ProjectDirectory,
    config: &PolicyConfig,
    requested: &[Scope],
) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in requested {
        let actions = granted_actions(who, projects, config, scope);
        if actions.is_empty() {
            continue;
        }
        let entry = match out
            .iter_mut()
            .position(|a| a.kind == scope.kind && a.name == scope.name)
        {
            Some(i) => &mut out[i],
            None => {
                out.push(Access {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for action in actions {
            if !entry.actions.iter().any(|a| a == action) {
                entry.actions.push(action.to_owned());
            }
        }
        entry.actions.sort_by_key(|a| rank(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(name: &str) -> Identity {
        Identity {
            user_id: format!("uid-{name}"),
            username: name.into(),
            domain: "Default".into(),
            method: Method::Password,
            projects: vec![],
            admin: false,
        }
    }

    fn app_credential(name: &str) -> Identity {
        Identity {
            method: Method::ApplicationCredential { id: "ac1".into() },
            ..user(name)
        }
    }

    /// Gives `who` roles on the project `name` (id `p-<name>`).
    fn role(mut who: Identity, name: &str, roles: &[&str]) -> Identity {
        who.projects.push(ProjectRoles {
            id: format!("p-{name}"),
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        });
        who
    }

    /// A directory of projects `(name, tags)`, ids `p-<name>`.
    fn dir(projects: &[(&str, &[&str])]) -> ProjectDirectory {
        projects
            .iter()
            .map(|(name, tags)| {
                (
                    name.to_string(),
                    ProjectInfo {
                        id: format!("p-{name}"),
                        name: name.to_string(),
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    /// The grant for a space-separated scope list, each entry rendered as
    /// `type:name:actions`.
    fn granted(
        who: Option<&Identity>,
        projects: &ProjectDirectory,
        config: &PolicyConfig,
        scopes: &str,
    ) -> Vec<String> {
        let requested = Scope::parse_list(scopes).unwrap();
        grant(who, projects, config, &requested)
            .into_iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect()
    }

    fn none() -> Vec<String> {
        Vec::new()
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig::default()
    }

    #[test]
    fn seed_other_users_namespace_gives_nothing() {
        let user1 = user("user1");
        let d = dir(&[]);
        for scope in [
            "repository:user2/testimage:push",
            "repository:user2/testimage:delete",
            "repository:user2/testimage:pull,push,delete",
            "repository:user2/testimage:*",
            "repository:user2/testimage:pull",
        ] {
            assert_eq!(granted(Some(&user1), &d, &cfg(), scope), none(), "{scope}");
        }
        // user2 has everything there.
        assert_eq!(
            granted(
                Some(&user("user2")),
                &d,
                &cfg(),
                "repository:user2/testimage:*"
            ),
            ["repository:user2/testimage:pull,push,delete"]
        );
    }

    #[test]
    fn owner_has_every_action_in_personal_namespace() {
        let d = dir(&[]);
        let alice = user("alice");
        assert_eq!(
            granted(Some(&alice), &d, &cfg(), "repository:alice/app:pull,push"),
            ["repository:alice/app:pull,push"]
        );
        assert_eq!(
            granted(
                Some(&alice),
                &d,
                &cfg(),
                "repository:alice/deep/er/app:delete"
            ),
            ["repository:alice/deep/er/app:delete"]
        );
        // User names are lower-cased.
        assert_eq!(
            granted(
                Some(&user("Alice")),
                &d,
                &cfg(),
                "repository:alice/app:push"
            ),
            ["repository:alice/app:push"]
        );
        // Refresh-token logins are the user's.
        let refreshed = Identity {
            method: Method::RefreshToken,
            ..user("alice")
        };
        assert_eq!(
            granted(Some(&refreshed), &d, &cfg(), "repository:alice/app:delete"),
            ["repository:alice/app:delete"]
        );
        // A user name that is not a valid component names no namespace.
        let mail = user("alice@example.com");
        assert_eq!(
            granted(Some(&mail), &d, &cfg(), "repository:alice/app:pull"),
            none()
        );
    }

    #[test]
    fn star_expands_to_concrete_actions() {
        let d = dir(&[("team", &[])]);
        assert_eq!(
            granted(Some(&user("alice")), &d, &cfg(), "repository:alice/app:*"),
            ["repository:alice/app:pull,push,delete"]
        );
        let member = role(user("bob"), "team", &["member"]);
        assert_eq!(
            granted(Some(&member), &d, &cfg(), "repository:team/app:*"),
            ["repository:team/app:pull,push"]
        );
        assert_eq!(
            granted(Some(&member), &d, &cfg(), "repository:team/app:delete,*"),
            ["repository:team/app:pull,push"]
        );
    }

    #[test]
    fn project_roles() {
        let d = dir(&[("team", &[])]);
        let all = "repository:team/app:pull,push,delete";
        let member = role(user("bob"), "team", &["member"]);
        assert_eq!(
            granted(Some(&member), &d, &cfg(), all),
            ["repository:team/app:pull,push"]
        );
        let reader = role(user("carol"), "team", &["reader"]);
        assert_eq!(
            granted(Some(&reader), &d, &cfg(), all),
            ["repository:team/app:pull"]
        );
        let admin = role(user("dave"), "team", &["admin"]);
        assert_eq!(
            granted(Some(&admin), &d, &cfg(), all),
            ["repository:team/app:pull,push,delete"]
        );
        // Implied roles listed too: the union.
        let expanded = role(user("erin"), "team", &["reader", "member", "admin"]);
        assert_eq!(
            granted(Some(&expanded), &d, &cfg(), all),
            ["repository:team/app:pull,push,delete"]
        );
        // Role names compare case-insensitively; unknown roles give nothing.
        let upper = role(user("frank"), "team", &["Member"]);
        assert_eq!(
            granted(Some(&upper), &d, &cfg(), all),
            ["repository:team/app:pull,push"]
        );
        let legacy = role(user("gina"), "team", &["_member_", "heat_stack_owner"]);
        assert_eq!(granted(Some(&legacy), &d, &cfg(), all), none());
        // No role on the project: nothing.
        let outsider = role(user("hank"), "other", &["admin"]);
        let d2 = dir(&[("team", &[]), ("other", &[])]);
        assert_eq!(granted(Some(&outsider), &d2, &cfg(), all), none());
        // A project admin is no registry admin.
        assert_eq!(
            granted(
                Some(&admin),
                &d,
                &cfg(),
                "registry:catalog:* repository:x/y:pull"
            ),
            none()
        );
    }

    #[test]
    fn project_names_compare_lower_cased() {
        let d = dir(&[("Team-A", &[])]);
        let member = Identity {
            projects: vec![ProjectRoles {
                id: "p-Team-A".into(),
                name: "Team-A".into(),
                roles: ["member".to_string()].into(),
            }],
            ..user("bob")
        };
        assert_eq!(
            granted(Some(&member), &d, &cfg(), "repository:team-a/app:push"),
            ["repository:team-a/app:push"]
        );
        // The repository name itself must be lower case.
        assert_eq!(
            granted(Some(&member), &d, &cfg(), "repository:Team-A/app:push"),
            none()
        );
        // A project name that is no valid component names no namespace.
        let d = dir(&[("My Project", &[])]);
        let member = role(user("bob"), "My Project", &["admin"]);
        let scope = Scope::repository("my project/app", &[Action::Push]);
        assert_eq!(grant(Some(&member), &d, &cfg(), &[scope]), vec![]);
    }

    #[test]
    fn roles_match_the_project_by_id() {
        // The directory's "team" is another project (say of another domain)
        // than the one bob is a member of.
        let mut d = dir(&[]);
        d.insert(
            "team".into(),
            ProjectInfo {
                id: "p-team-elsewhere".into(),
                name: "team".into(),
                tags: vec![],
            },
        );
        let bob = role(user("bob"), "team", &["admin"]);
        assert_eq!(
            granted(
                Some(&bob),
                &d,
                &cfg(),
                "repository:team/app:pull,push,delete"
            ),
            none()
        );
    }

    #[test]
    fn a_name_that_is_both_user_and_project_is_the_projects() {
        let d = dir(&[("team", &[])]);
        let all = "repository:team/app:*";
        // User "team" without a role on project "team": nothing.
        assert_eq!(granted(Some(&user("team")), &d, &cfg(), all), none());
        assert_eq!(granted(Some(&user("Team")), &d, &cfg(), all), none());
        // With reader: only what the role gives.
        let reader = role(user("team"), "team", &["reader"]);
        assert_eq!(
            granted(Some(&reader), &d, &cfg(), all),
            ["repository:team/app:pull"]
        );
        // A project the cached directory does not know yet, but the identity
        // does: still the project's.
        let empty = dir(&[]);
        assert_eq!(
            granted(Some(&reader), &empty, &cfg(), all),
            ["repository:team/app:pull"]
        );
        let member = role(user("bob"), "team", &["member"]);
        assert_eq!(
            granted(Some(&member), &empty, &cfg(), all),
            ["repository:team/app:pull,push"]
        );
    }

    #[test]
    fn ambiguous_project_names_give_nothing_but_to_admins() {
        let d = dir(&[("Team", &["registry-public"]), ("team", &[])]);
        let member = role(user("bob"), "team", &["admin"]);
        let all = "repository:team/app:*";
        assert_eq!(granted(Some(&member), &d, &cfg(), all), none());
        assert_eq!(granted(Some(&user("team")), &d, &cfg(), all), none());
        let admin = Identity {
            admin: true,
            ..user("root")
        };
        assert_eq!(
            granted(Some(&admin), &d, &cfg(), all),
            ["repository:team/app:pull,push,delete"]
        );
        // The same among the identity's own projects (not in the directory).
        let twice = Identity {
            projects: vec![
                ProjectRoles {
                    id: "p1".into(),
                    name: "dup".into(),
                    roles: ["admin".to_string()].into(),
                },
                ProjectRoles {
                    id: "p2".into(),
                    name: "DUP".into(),
                    roles: ["admin".to_string()].into(),
                },
            ],
            ..user("bob")
        };
        assert_eq!(
            granted(Some(&twice), &dir(&[]), &cfg(), "repository:dup/app:*"),
            none()
        );
    }

    #[test]
    fn registry_public_projects() {
        let d = dir(&[("shared", &["registry-public"]), ("closed", &[])]);
        let anyone = user("zoe");
        assert_eq!(
            granted(
                Some(&anyone),
                &d,
                &cfg(),
                "repository:shared/app:pull,push,delete"
            ),
            ["repository:shared/app:pull"]
        );
        assert_eq!(
            granted(Some(&anyone), &d, &cfg(), "repository:closed/app:pull"),
            none()
        );
        // Members keep their role's rights.
        let member = role(user("bob"), "shared", &["member"]);
        assert_eq!(
            granted(Some(&member), &d, &cfg(), "repository:shared/app:*"),
            ["repository:shared/app:pull,push"]
        );
        // Tags compare exactly.
        let d = dir(&[("shared", &["Registry-Public", "registry-public "])]);
        assert_eq!(
            granted(Some(&anyone), &d, &cfg(), "repository:shared/app:pull"),
            none()
        );
    }

    #[test]
    fn anonymous_pull_of_public_projects() {
        let d = dir(&[("shared", &["registry-public"]), ("closed", &[])]);
        let off = cfg();
        let on = PolicyConfig {
            anonymous_pull_public: true,
            ..cfg()
        };
        let ask = "repository:shared/app:pull,push,delete";
        assert_eq!(granted(None, &d, &off, ask), none());
        assert_eq!(granted(None, &d, &on, ask), ["repository:shared/app:pull"]);
        // Nothing else, even when enabled.
        for scope in [
            "repository:closed/app:pull",
            "repository:public/app:pull",
            "repository:alice/app:pull",
            "repository:shared:pull",
            "registry:catalog:*",
        ] {
            assert_eq!(granted(None, &d, &on, scope), none(), "{scope}");
        }
        // registry-pull= shares with members only, never with anonymous.
        let d = dir(&[("lib", &["registry-pull=team"]), ("team", &[])]);
        assert_eq!(granted(None, &d, &on, "repository:lib/x:pull"), none());
    }

    #[test]
    fn registry_pull_shares_with_another_projects_members() {
        let d = dir(&[
            ("lib", &["registry-pull=team", "registry-pull=Ops"]),
            ("team", &["registry-pull=third"]),
            ("ops", &[]),
            ("third", &[]),
        ]);
        let ask = "repository:lib/base:pull,push,delete";
        // Any role on the other project, even one that gives nothing itself.
        for roles in [&["member"][..], &["reader"], &["admin"], &["_member_"]] {
            let who = role(user("bob"), "team", roles);
            assert_eq!(
                granted(Some(&who), &d, &cfg(), ask),
                ["repository:lib/base:pull"],
                "{roles:?}"
            );
        }
        // The tag's project name compares lower-cased.
        let ops = role(user("olga"), "ops", &["reader"]);
        assert_eq!(
            granted(Some(&ops), &d, &cfg(), ask),
            ["repository:lib/base:pull"]
        );
        // Non-members get nothing.
        assert_eq!(granted(Some(&user("zoe")), &d, &cfg(), ask), none());
        // An empty role set is no membership.
        let empty = role(user("bob"), "team", &[]);
        assert_eq!(granted(Some(&empty), &d, &cfg(), ask), none());
        // Not transitive: third's members may pull team's, not lib's.
        let third = role(user("tom"), "third", &["member"]);
        assert_eq!(granted(Some(&third), &d, &cfg(), ask), none());
        assert_eq!(
            granted(Some(&third), &d, &cfg(), "repository:team/x:pull"),
            ["repository:team/x:pull"]
        );
        // A tag naming an unknown project shares with nobody.
        let d = dir(&[("lib", &["registry-pull=ghost", "registry-pull="])]);
        assert_eq!(granted(Some(&user("ghost")), &d, &cfg(), ask), none());
    }

    #[test]
    fn public_namespace() {
        let d = dir(&[("public", &[])]);
        let ask = "repository:public/base:pull,push,delete";
        assert_eq!(
            granted(Some(&user("alice")), &d, &cfg(), ask),
            ["repository:public/base:pull"]
        );
        // Not the roles of a project named "public", nor a user of that name.
        let member = role(user("public"), "public", &["admin"]);
        assert_eq!(
            granted(Some(&member), &d, &cfg(), ask),
            ["repository:public/base:pull"]
        );
        // Administrators write.
        let admin = Identity {
            admin: true,
            ..user("root")
        };
        assert_eq!(
            granted(Some(&admin), &d, &cfg(), ask),
            ["repository:public/base:pull,push,delete"]
        );
        // A bare "public" repository is no namespace.
        assert_eq!(
            granted(Some(&user("alice")), &d, &cfg(), "repository:public:pull"),
            none()
        );
    }

    #[test]
    fn administrators_everything_everywhere() {
        let d = dir(&[("team", &[])]);
        let ask = "repository:someone/app:* repository:team/x:pull,delete \
                   repository:ubuntu:push registry:catalog:*";
        let expect = [
            "repository:someone/app:pull,push,delete",
            "repository:team/x:pull,delete",
            "repository:ubuntu:push",
            "registry:catalog:*",
        ];
        let flagged = Identity {
            admin: true,
            ..user("root")
        };
        assert_eq!(granted(Some(&flagged), &d, &cfg(), ask), expect);
        // By user name, name@domain or user id.
        for entry in ["root", "root@Default", "uid-root"] {
            let config = PolicyConfig {
                admin_users: vec![entry.into()],
                ..cfg()
            };
            assert_eq!(
                granted(Some(&user("root")), &d, &config, ask),
                expect,
                "{entry}"
            );
        }
        // Exact comparisons: other domain, other case.
        for entry in ["root@Other", "Root", "uid-Root", "root@"] {
            let config = PolicyConfig {
                admin_users: vec![entry.into()],
                ..cfg()
            };
            assert_eq!(
                granted(Some(&user("root")), &d, &config, "registry:catalog:*"),
                none(),
                "{entry}"
            );
        }
        // By role, on any project.
        let config = PolicyConfig {
            admin_roles: vec!["registry-admin".into()],
            ..cfg()
        };
        let by_role = role(user("ann"), "ops", &["Registry-Admin"]);
        assert_eq!(granted(Some(&by_role), &d, &config, ask), expect);
        // Still nothing for invalid names or unknown types.
        assert_eq!(
            granted(
                Some(&flagged),
                &d,
                &cfg(),
                "repository:Team/x:pull repository:a/../b:* foo:bar:* registry:other:*"
            ),
            none()
        );
    }

    #[test]
    fn catalog() {
        let d = dir(&[("team", &["registry-public"])]);
        let admin = Identity {
            admin: true,
            ..user("root")
        };
        assert_eq!(
            granted(Some(&admin), &d, &cfg(), "registry:catalog:*"),
            ["registry:catalog:*"]
        );
        // Only `*` is a catalog action.
        assert_eq!(
            granted(Some(&admin), &d, &cfg(), "registry:catalog:pull"),
            none()
        );
        let on = PolicyConfig {
            anonymous_pull_public: true,
            ..cfg()
        };
        for who in [
            Some(user("alice")),
            Some(role(user("bob"), "team", &["admin"])),
            Some(app_credential("carol")),
            None,
        ] {
            assert_eq!(
                granted(who.as_ref(), &d, &on, "registry:catalog:*"),
                none(),
                "{who:?}"
            );
        }
    }

    #[test]
    fn application_credentials_get_no_more_than_their_project_and_roles() {
        let d = dir(&[
            ("team", &[]),
            ("shared", &["registry-public"]),
            ("lib", &["registry-pull=team"]),
        ]);
        let ac = role(app_credential("alice"), "team", &["member"]);
        // No personal namespace.
        assert_eq!(
            granted(Some(&ac), &d, &cfg(), "repository:alice/app:*"),
            none()
        );
        // Its project's role.
        assert_eq!(
            granted(Some(&ac), &d, &cfg(), "repository:team/app:*"),
            ["repository:team/app:pull,push"]
        );
        // What every authenticated identity reads; what its project shares.
        assert_eq!(
            granted(
                Some(&ac),
                &d,
                &cfg(),
                "repository:public/x:* repository:shared/x:* repository:lib/x:*"
            ),
            [
                "repository:public/x:pull",
                "repository:shared/x:pull",
                "repository:lib/x:pull"
            ]
        );
        // admin_users does not apply to application credentials ...
        let config = PolicyConfig {
            admin_users: vec!["alice".into()],
            admin_roles: vec!["registry-admin".into()],
            ..cfg()
        };
        assert_eq!(
            granted(
                Some(&ac),
                &d,
                &config,
                "registry:catalog:* repository:x/y:push"
            ),
            none()
        );
        // ... but a credential holding an administrator role is one.
        let admin_ac = role(app_credential("alice"), "ops", &["registry-admin"]);
        assert_eq!(
            granted(Some(&admin_ac), &d, &config, "registry:catalog:*"),
            ["registry:catalog:*"]
        );
    }

    #[test]
    fn single_component_names_belong_to_nobody() {
        let d = dir(&[("team", &["registry-public"])]);
        let on = PolicyConfig {
            anonymous_pull_public: true,
            ..cfg()
        };
        let alice = user("alice");
        let member = role(user("bob"), "team", &["admin"]);
        assert_eq!(granted(Some(&alice), &d, &on, "repository:alice:*"), none());
        assert_eq!(granted(Some(&member), &d, &on, "repository:team:*"), none());
        assert_eq!(granted(None, &d, &on, "repository:team:pull"), none());
    }

    #[test]
    fn intersection_of_several_scopes() {
        let d = dir(&[("team", &[]), ("shared", &["registry-public"])]);
        let bob = role(user("bob"), "team", &["reader"]);
        let got = granted(
            Some(&bob),
            &d,
            &cfg(),
            "repository:bob/app:pull,push repository:team/app:pull,push \
             repository:alice/app:pull repository:shared/base:pull \
             registry:catalog:* repository:team/app:delete repository:bob/app:delete",
        );
        // Order of first appearance; nothing-granted scopes omitted;
        // several scopes for one repository merged.
        assert_eq!(
            got,
            [
                "repository:bob/app:pull,push,delete",
                "repository:team/app:pull",
                "repository:shared/base:pull",
            ]
        );
        // Actions asked for in any order come out pull, push, delete.
        assert_eq!(
            granted(
                Some(&bob),
                &d,
                &cfg(),
                "repository:bob/x:delete repository:bob/x:push,pull"
            ),
            ["repository:bob/x:pull,push,delete"]
        );
        // Asking for nothing (unknown actions are dropped by the parser).
        assert_eq!(
            granted(Some(&bob), &d, &cfg(), "repository:bob/app:frobnicate"),
            none()
        );
        assert_eq!(grant(Some(&bob), &d, &cfg(), &[]), Vec::<Access>::new());
    }

    #[test]
    fn unknown_scope_types() {
        let alice = Identity {
            admin: true,
            ..user("alice")
        };
        let d = dir(&[]);
        for scope in [
            "repository(plugin):alice/app:pull",
            "Repository:alice/app:pull",
            "foo:alice/app:pull",
            "registry:Catalog:*",
            "registry:catalog/x:*",
        ] {
            assert_eq!(granted(Some(&alice), &d, &cfg(), scope), none(), "{scope}");
        }
    }

    #[test]
    fn hostile_names_grant_nothing() {
        let d = dir(&[]);
        let alice = user("alice");
        let admin = Identity {
            admin: true,
            ..user("root")
        };
        let long = format!("alice/{}", "a".repeat(250));
        for name in [
            "alice/../bob/app",
            "alice/..",
            "alice//app",
            "/alice/app",
            "alice/app/",
            "Alice/app",
            "alice/App",
            "alice/.app",
            "alice/app.",
            "alice/-app",
            "alice/_app",
            "alice/a..b",
            "alice/a._b",
            "alice/a-.b",
            "alice/a___b",
            "alice/%2e%2e",
            "alice/a%2fb",
            "alice/a\\b",
            "alice/a b",
            "alice/a\nb",
            "alice/a\0b",
            "alice/ünï",
            "alice/a+b",
            long.as_str(),
        ] {
            let scope = Scope::repository(name, &[Action::All]);
            for who in [&alice, &admin] {
                assert_eq!(
                    grant(Some(who), &d, &cfg(), std::slice::from_ref(&scope)),
                    vec![],
                    "{name:?}"
                );
            }
        }
        // The Kelvin sign lower-cases to `k`, but only ASCII case folds.
        let kelvin = user("\u{212A}elvin");
        assert_eq!(
            granted(Some(&kelvin), &d, &cfg(), "repository:kelvin/app:*"),
            none()
        );
        let d = dir(&[("\u{212A}elvin", &["registry-public"])]);
        assert_eq!(
            granted(Some(&user("kelvin")), &d, &cfg(), "repository:kelvin/app:*"),
            ["repository:kelvin/app:pull,push,delete"]
        );
    }

    #[test]
    fn repository_name_grammar() {
        for ok in [
            "a/b",
            "a",
            "a0/b1/c2",
            "a.b/c",
            "a_b/c",
            "a__b/c",
            "a-b/c",
            "a---b/c",
            "a-b.c_d__e/f",
            &"a".repeat(255),
        ] {
            assert!(valid_repository_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "A",
            "a/B",
            ".a",
            "a.",
            "a..b",
            "a___b",
            "a._b",
            "a_.b",
            "a-_b",
            "_a",
            "-a",
            "a-",
            "a:b",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(!valid_repository_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn policy_config_from_json() {
        let c: PolicyConfig = serde_json::from_str(
            r#"{"admin_users":["root"],"admin_roles":["registry-admin"],"anonymous_pull_public":true}"#,
        )
        .unwrap();
        assert_eq!(c.admin_users, ["root"]);
        assert!(c.anonymous_pull_public);
        let d: PolicyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(d, PolicyConfig::default());
        assert!(!d.anonymous_pull_public);
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"admins":[]}"#).is_err());
    }

    // Property tests: inputs drawn from small vocabularies so that names,
    // projects, roles and tags collide often.

    const NAMES: &[&str] = &["alice", "Alice", "bob", "team", "Team", "public", "lib"];
    const ROLES: &[&str] = &["admin", "member", "reader", "_member_", "boss"];
    const TAGS: &[&str] = &[
        "registry-public",
        "registry-pull=team",
        "registry-pull=bob",
        "registry-pull=lib",
        "other",
    ];
    const IDS: &[&str] = &["p1", "p2", "p3", "p4"];

    fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(options).prop_map(str::to_owned)
    }

    fn subset(options: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(options, 0..=options.len())
            .prop_map(|v| v.into_iter().map(str::to_owned).collect())
    }

    fn arb_project_roles() -> impl Strategy<Value = ProjectRoles> {
        (pick(IDS), pick(NAMES), subset(ROLES)).prop_map(|(id, name, roles)| ProjectRoles {
            id,
            name,
            roles: roles.into_iter().collect(),
        })
    }

    fn identity() -> impl Strategy<Value = Identity> {
        (
            pick(NAMES),
            0..3u8,
            proptest::bool::weighted(0.1),
            proptest::collection::vec(arb_project_roles(), 0..4),
        )
            .prop_map(|(username, method, admin, projects)| Identity {
                user_id: format!("uid-{username}"),
                username,
                domain: "Default".into(),
                method: match method {
                    0 => Method::Password,
                    1 => Method::RefreshToken,
                    _ => Method::ApplicationCredential { id: "ac".into() },
                },
                projects,
                admin,
            })
    }

    fn directory() -> impl Strategy<Value = ProjectDirectory> {
        proptest::collection::vec((pick(NAMES), pick(IDS), subset(TAGS)), 0..4).prop_map(|v| {
            v.into_iter()
                .map(|(name, id, tags)| (name.clone(), ProjectInfo { id, name, tags }))
                .collect()
        })
    }

    fn config() -> impl Strategy<Value = PolicyConfig> {
        (
            proptest::sample::subsequence(&["alice", "bob@Default", "uid-team"][..], 0..=1),
            proptest::sample::subsequence(&["boss"][..], 0..=1),
            any::<bool>(),
        )
            .prop_map(|(users, roles, anon)| PolicyConfig {
                admin_users: users.into_iter().map(str::to_owned).collect(),
                admin_roles: roles.into_iter().map(str::to_owned).collect(),
                anonymous_pull_public: anon,
            })
    }

    fn scope() -> impl Strategy<Value = Scope> {
        // Mostly `<name>/...`, so that namespaces meet users and projects.
        let name = prop_oneof![
            6 => (pick(NAMES), pick(&["/app", "/a/b"])).prop_map(|(a, b)| format!("{a}{b}")),
            2 => (pick(NAMES), pick(&["", "/..", "//x", "/A", "/", "/a_.b"]))
                .prop_map(|(a, b)| format!("{a}{b}")),
            1 => Just("catalog".to_owned()),
            1 => "[a-zA-Z0-9./_-]{1,16}",
        ];
        let kind = prop_oneof![
            6 => Just("repository".to_owned()),
            1 => Just("registry".to_owned()),
            1 => Just("repository(plugin)".to_owned()),
        ];
        let actions = proptest::sample::subsequence(
            &[Action::Pull, Action::Push, Action::Delete, Action::All][..],
            0..=4,
        );
        (kind, name, actions).prop_map(|(kind, name, actions)| Scope {
            kind,
            name,
            actions: actions.into_iter().collect(),
        })
    }

    /// A crude, independent bound on repository names: lower-case ASCII
    /// components that start and end alphanumeric.
    fn plausible_name(name: &str) -> bool {
        name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && !c.contains("..")
        })
    }

    /// An independent statement of who may write where.
    fn entitled(
        who: &Identity,
        projects: &ProjectDirectory,
        config: &PolicyConfig,
        name: &str,
        action: &str,
    ) -> bool {
        let app = matches!(who.method, Method::ApplicationCredential { .. });
        let admin = who.admin
            || who
                .projects
                .iter()
                .any(|p| p.roles.iter().any(|r| config.admin_roles.contains(r)))
            || (!app
                && config.admin_users.iter().any(|u| {
                    *u == who.username
                        || *u == who.user_id
                        || *u == format!("{}@Default", who.username)
                }));
        if !plausible_name(name) {
            return false;
        }
        if admin {
            return true;
        }
        let Some((ns, _)) = name.split_once('/') else {
            return false;
        };
        if ns == "public" {
            return false;
        }
        let project_ids: Vec<&str> = projects
            .values()
            .map(|p| (p.name.as_str(), p.id.as_str()))
            .chain(
                who.projects
                    .iter()
                    .map(|p| (p.name.as_str(), p.id.as_str())),
            )
            .filter(|(n, _)| n.to_lowercase() == ns)
            .map(|(_, id)| id)
            .collect();
        if project_ids.is_empty() {
            return !app && who.username.to_lowercase() == ns;
        }
        let writing_roles: &[&str] = if action == "delete" {
            &["admin"]
        } else {
            &["admin", "member"]
        };
        who.projects.iter().any(|p| {
            project_ids.contains(&p.id.as_str())
                && p.roles.iter().any(|r| writing_roles.contains(&r.as_str()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn grant_is_a_subset_of_the_request(
            who in proptest::option::weighted(0.8, identity()),
            projects in directory(),
            config in config(),
            requested in proptest::collection::vec(scope(), 0..6),
        ) {
            let got = grant(who.as_ref(), &projects, &config, &requested);
            let mut seen = BTreeSet::new();
            for access in &got {
                prop_assert!(seen.insert((access.kind.clone(), access.name.clone())), "merged");
                prop_assert!(!access.actions.is_empty());
                let asked: Vec<&Scope> = requested
                    .iter()
                    .filter(|s| s.kind == access.kind && s.name == access.name)
                    .collect();
                prop_assert!(!asked.is_empty());
                for action in &access.actions {
                    let ok = asked.iter().any(|s| {
                        s.actions.contains(&Action::All)
                            || s.actions.iter().any(|a| a.as_str() == action)
                    });
                    prop_assert!(ok, "{action} not asked in {access:?}");
                    prop_assert!(
                        action != "*" || access.kind == "registry",
                        "only the catalog is granted as *"
                    );
                }
            }
        }

        #[test]
        fn only_owners_admins_and_project_roles_write(
            who in proptest::option::weighted(0.8, identity()),
            projects in directory(),
            config in config(),
            requested in proptest::collection::vec(scope(), 0..6),
        ) {
            let got = grant(who.as_ref(), &projects, &config, &requested);
            for access in &got {
                // The catalog's `*` too: `entitled` gives it to admins only.
                for action in access.actions.iter().filter(|a| *a != "pull") {
                    let Some(w) = who.as_ref() else {
                        return Err(TestCaseError::fail(format!("anonymous got {access:?}")));
                    };
                    prop_assert!(
                        entitled(w, &projects, &config, &access.name, action),
                        "{w:?} got {action} on {}", access.name
                    );
                }
            }
        }

        #[test]
        fn anonymous_only_pulls_public_projects(
            projects in directory(),
            config in config(),
            requested in proptest::collection::vec(scope(), 0..6),
        ) {
            for access in grant(None, &projects, &config, &requested) {
                prop_assert!(config.anonymous_pull_public);
                prop_assert_eq!(&access.actions, &["pull".to_owned()]);
                let (ns, _) = access.name.split_once('/').unwrap();
                prop_assert!(projects.values().any(|p| p.name.to_lowercase() == ns
                    && p.tags.iter().any(|t| t == TAG_PUBLIC)));
            }
        }
    }
}
