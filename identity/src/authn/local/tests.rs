//! Tests of the local users backend: logins, timing shape, the cache,
//! reloads, the file's rules, management functions and the policy's view of
//! local identities.

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use berth_auth::Scope;

use super::*;
use crate::policy::{PolicyConfig, grant};

const COST: u32 = 4;

fn opts() -> LocalOptions {
    LocalOptions {
        cache_ttl: Duration::from_secs(60),
        cache_max_entries: 100,
        bcrypt_cost: COST,
        reload_interval: Duration::ZERO,
    }
}

fn projects(list: &[(&str, Role)]) -> BTreeMap<String, Role> {
    list.iter().map(|(p, r)| (p.to_string(), *r)).collect()
}

/// A users file with `alice` (member of team-a, reader of team-b, admin of
/// team-c) and `root` (registry administrator), and the backend on it.
fn fixture() -> (tempfile::TempDir, PathBuf, LocalUsers) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let alice = projects(&[
        ("team-a", Role::Member),
        ("team-b", Role::Reader),
        ("team-c", Role::Admin),
    ]);
    assert!(set_user(&path, "alice", "alice-pw", false, &alice, COST).unwrap());
    assert!(set_user(&path, "root", "root-pw", true, &BTreeMap::new(), COST).unwrap());
    let users = LocalUsers::open(&path, opts()).unwrap();
    (dir, path, users)
}

fn login(user: &str, password: &str) -> Credentials {
    Credentials::from_basic(user, password)
}

fn verifications(users: &LocalUsers) -> u64 {
    users.verifications.load(Ordering::SeqCst)
}

fn roles(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|r| r.to_string()).collect()
}

#[tokio::test]
async fn right_password_gives_the_identity_from_the_file() {
    let (_dir, _path, users) = fixture();
    let alice = users
        .authenticate(&login("alice", "alice-pw"))
        .await
        .unwrap();
    assert_eq!(alice.user_id, "local:alice");
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.domain, "local");
    assert_eq!(alice.method, Method::Password);
    assert!(!alice.admin);
    assert_eq!(
        alice.projects,
        vec![
            ProjectRoles {
                id: "local:team-a".into(),
                name: "team-a".into(),
                roles: roles(&["member", "reader"]),
            },
            ProjectRoles {
                id: "local:team-b".into(),
                name: "team-b".into(),
                roles: roles(&["reader"]),
            },
            ProjectRoles {
                id: "local:team-c".into(),
                name: "team-c".into(),
                roles: roles(&["admin", "member", "reader"]),
            },
        ]
    );
    let root = users.authenticate(&login("root", "root-pw")).await.unwrap();
    assert!(root.admin);
    assert!(root.projects.is_empty());
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_invalid() {
    let (_dir, _path, users) = fixture();
    for (user, password) in [
        ("alice", "wrong"),
        ("alice", "root-pw"),
        ("nobody", "alice-pw"),
        ("Alice", "alice-pw"),
    ] {
        assert!(
            matches!(
                users.authenticate(&login(user, password)).await,
                Err(AuthnError::Invalid)
            ),
            "{user}:{password}"
        );
    }
}

#[tokio::test]
async fn domains_application_credentials_and_empty_or_long_passwords() {
    let (_dir, _path, users) = fixture();
    let alice = users
        .authenticate(&login("alice@local", "alice-pw"))
        .await
        .unwrap();
    assert_eq!(alice.user_id, "local:alice");
    let before = verifications(&users);
    for creds in [
        login("alice@Default", "alice-pw"),
        login("applicationcredential-abc", "alice-pw"),
        login("alice", ""),
        login("alice", &"x".repeat(MAX_PASSWORD_LEN + 1)),
    ] {
        assert!(matches!(
            users.authenticate(&creds).await,
            Err(AuthnError::Invalid)
        ));
    }
    assert_eq!(
        verifications(&users),
        before,
        "refused on their face, without a hash check"
    );
}

#[tokio::test]
async fn unknown_users_cost_a_bcrypt_check_like_known_ones() {
    let (_dir, _path, users) = fixture();
    let n = verifications(&users);
    assert!(users.authenticate(&login("alice", "wrong")).await.is_err());
    assert_eq!(verifications(&users), n + 1);
    assert!(users.authenticate(&login("nobody", "wrong")).await.is_err());
    assert_eq!(verifications(&users), n + 2, "the dummy hash is checked");
    // The dummy hash has the configured cost: the same work as a real one.
    let parts: bcrypt::HashParts = users.dummy_hash.parse().unwrap();
    assert_eq!(parts.get_cost(), COST);

    // And roughly the same time (minimum of a few runs, cost 8 so bcrypt
    // dominates; generous bound against a busy machine).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    set_user(&path, "alice", "alice-pw", false, &BTreeMap::new(), 8).unwrap();
    let slow = LocalUsers::open(
        &path,
        LocalOptions {
            bcrypt_cost: 8,
            cache_ttl: Duration::ZERO,
            ..opts()
        },
    )
    .unwrap();
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        assert!(slow.authenticate(&login("alice", "wrong")).await.is_err());
        known = known.min(t.elapsed());
        let t = Instant::now();
        assert!(slow.authenticate(&login("nobody", "wrong")).await.is_err());
        unknown = unknown.min(t.elapsed());
    }
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "known {known:?}, unknown {unknown:?}"
    );
}

#[tokio::test]
async fn a_dummy_hash_made_ahead_is_used_if_its_cost_is_right() {
    let (_dir, path, _users) = fixture();
    let ahead = DummyHash::new(COST).unwrap();
    assert_eq!(ahead.cost(), COST);
    let users = LocalUsers::open_with(&path, opts(), ahead.clone()).unwrap();
    assert_eq!(users.dummy_hash, ahead.hash);
    let n = verifications(&users);
    assert!(users.authenticate(&login("nobody", "wrong")).await.is_err());
    assert_eq!(verifications(&users), n + 1, "the dummy hash is checked");

    // Another cost: made again at the configured one.
    let users = LocalUsers::open_with(&path, opts(), DummyHash::new(COST + 1).unwrap()).unwrap();
    let parts: bcrypt::HashParts = users.dummy_hash.parse().unwrap();
    assert_eq!(parts.get_cost(), COST);
    assert!(matches!(DummyHash::new(3), Err(LocalError::Cost(3))));
    assert!(!format!("{ahead:?}").contains("$2"), "no hash in Debug");
}

#[tokio::test]
async fn a_cache_hit_runs_no_bcrypt() {
    let (_dir, _path, users) = fixture();
    let first = users
        .authenticate(&login("alice", "alice-pw"))
        .await
        .unwrap();
    let n = verifications(&users);
    let again = users
        .authenticate(&login("alice", "alice-pw"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(verifications(&users), n, "served from the cache");
    // Another password is no hit, and failures are not cached.
    assert!(users.authenticate(&login("alice", "other")).await.is_err());
    assert!(users.authenticate(&login("alice", "other")).await.is_err());
    assert_eq!(verifications(&users), n + 2);
    assert_eq!(users.cache.len(), 1);
}

#[tokio::test]
async fn changes_to_the_file_take_effect_without_restart() {
    let (_dir, path, users) = fixture();
    users
        .authenticate(&login("alice", "alice-pw"))
        .await
        .unwrap();
    assert!(
        users
            .authenticate(&login("carol", "carol-pw"))
            .await
            .is_err()
    );

    set_user(&path, "carol", "carol-pw", false, &BTreeMap::new(), COST).unwrap();
    let carol = users
        .authenticate(&login("carol", "carol-pw"))
        .await
        .unwrap();
    assert_eq!(carol.user_id, "local:carol");

    // A new password: the cached check of the old one no longer counts.
    set_password(&path, "alice", "new-pw", COST).unwrap();
    assert!(
        users
            .authenticate(&login("alice", "alice-pw"))
            .await
            .is_err()
    );
    assert!(users.authenticate(&login("alice", "new-pw")).await.is_ok());

    // New roles reach the identity.
    set_user(
        &path,
        "alice",
        "new-pw",
        true,
        &projects(&[("team-d", Role::Reader)]),
        COST,
    )
    .unwrap();
    let alice = users.authenticate(&login("alice", "new-pw")).await.unwrap();
    assert!(alice.admin);
    assert_eq!(alice.projects.len(), 1);
    assert!(users.projects().await.unwrap().contains_key("team-d"));

    remove_user(&path, "alice").unwrap();
    assert!(users.authenticate(&login("alice", "new-pw")).await.is_err());
    assert!(matches!(
        users.reauthorize("local:alice").await,
        Err(AuthnError::Invalid)
    ));
}

#[tokio::test]
async fn the_file_is_looked_at_no_more_often_than_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    set_user(&path, "alice", "alice-pw", false, &BTreeMap::new(), COST).unwrap();
    let users = LocalUsers::open(
        &path,
        LocalOptions {
            reload_interval: Duration::from_millis(300),
            ..opts()
        },
    )
    .unwrap();
    set_user(&path, "bob", "bob-pw", false, &BTreeMap::new(), COST).unwrap();
    assert!(users.authenticate(&login("bob", "bob-pw")).await.is_err());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(users.authenticate(&login("bob", "bob-pw")).await.is_ok());
}

#[tokio::test]
async fn a_bad_file_keeps_the_last_good_version() {
    let (_dir, path, users) = fixture();
    let good = fs::read_to_string(&path).unwrap();
    for bad in [
        "this is not toml [".to_owned(),
        format!("{good}\n[[user]]\nname = \"alice\"\npassword_hash = \"x\"\n"),
        good.replace("admin = true", "admin = true\nsuperuser = true"),
    ] {
        fs::write(&path, bad).unwrap();
        let alice = users.authenticate(&login("alice", "alice-pw")).await;
        assert_eq!(alice.unwrap().username, "alice");
        assert_eq!(users.users().len(), 2);
    }
    fs::remove_file(&path).unwrap();
    assert!(users.authenticate(&login("root", "root-pw")).await.is_ok());
    assert!(users.reauthorize("local:root").await.is_ok());
    // Fixed: the new version is read.
    let fixed = good.replace("admin = true\n", "");
    fs::write(&path, fixed).unwrap();
    assert!(
        !users
            .authenticate(&login("root", "root-pw"))
            .await
            .unwrap()
            .admin
    );
}

#[test]
fn the_files_rules() {
    let hash = bcrypt::hash("pw", COST).unwrap();
    let user = |name: &str| format!("[[user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n");
    let ok = format!(
        "{HEADER}{}admin = true\nprojects = {{ team-a = \"member\", \"b.c\" = \"reader\" }}\n{}",
        user("alice"),
        user("bob")
    );
    let table = Table::parse(&ok).unwrap();
    assert_eq!(table.users.len(), 2);
    assert!(Table::parse("").unwrap().users.is_empty());

    let refused = [
        (
            format!("{}{}", user("alice"), user("alice")),
            "more than once",
        ),
        (user("Alice"), "invalid name"),
        (user("a..b"), "invalid name"),
        (user("-a"), "invalid name"),
        (user("public"), "invalid name"),
        (user(&"a".repeat(MAX_NAME_LEN + 1)), "invalid name"),
        (
            format!("{}projects = {{ Team = \"member\" }}\n", user("alice")),
            "invalid name",
        ),
        (
            format!("{}projects = {{ team = \"owner\" }}\n", user("alice")),
            "unknown variant",
        ),
        (
            format!("{}password = \"pw\"\n", user("alice")),
            "unknown field",
        ),
        (
            format!("{}[[group]]\nname = \"g\"\n", user("alice")),
            "unknown field",
        ),
        (
            "[[user]]\nname = \"alice\"\npassword_hash = \"$2b$04$short\"\n".to_owned(),
            "not a bcrypt hash",
        ),
        ("[[user]]\nname = \"alice\"\n".to_owned(), "password_hash"),
    ];
    for (text, why) in refused {
        let err = Table::parse(&text).unwrap_err();
        assert!(err.contains(why), "{text:?}: {err}");
        assert!(!err.contains(&hash), "no hash in messages: {err}");
    }
    assert!(valid_name(&"a".repeat(MAX_NAME_LEN)));
    assert!(valid_name("team_a.b-c"));
}

#[test]
fn render_parses_back_in_order() {
    let (_dir, path, _users) = fixture();
    set_user(
        &path,
        "a.b_c",
        "pw",
        false,
        &projects(&[("x.y", Role::Admin)]),
        COST,
    )
    .unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(HEADER));
    let table = Table::parse(&text).unwrap();
    let names: Vec<&str> = table.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "root", "a.b_c"]);
    assert_eq!(table.render(), text);
}

#[test]
fn ensure_admin_creates_both_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    let password_file = dir.path().join("admin-password");
    let created = ensure_admin(&users_file, &password_file, COST)
        .unwrap()
        .expect("created");
    assert_eq!(created.name, "admin");
    assert_eq!(created.password_file, password_file);
    for f in [&users_file, &password_file] {
        assert_eq!(
            fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
    }
    let password = fs::read_to_string(&password_file).unwrap();
    let password = password.trim_end();
    assert!(password.len() >= 24 && password.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(!fs::read_to_string(&users_file).unwrap().contains(password));
    let listed = list_users(&users_file).unwrap();
    assert_eq!(
        listed,
        vec![UserSummary {
            name: "admin".into(),
            admin: true,
            projects: BTreeMap::new(),
        }]
    );

    // Only once: an existing users file is left alone.
    let before = fs::read_to_string(&users_file).unwrap();
    assert_eq!(
        ensure_admin(&users_file, &password_file, COST).unwrap(),
        None
    );
    assert_eq!(fs::read_to_string(&users_file).unwrap(), before);

    // Passwords differ between runs.
    let other = tempfile::tempdir().unwrap();
    ensure_admin(
        &other.path().join("users.toml"),
        &other.path().join("pw"),
        COST,
    )
    .unwrap();
    assert_ne!(
        fs::read_to_string(other.path().join("pw"))
            .unwrap()
            .trim_end(),
        password
    );
}

#[tokio::test]
async fn the_generated_password_logs_in_as_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    let password_file = dir.path().join("admin-password");
    ensure_admin(&users_file, &password_file, COST).unwrap();
    let password = fs::read_to_string(&password_file).unwrap();
    let users = LocalUsers::open(&users_file, opts()).unwrap();
    let admin = users
        .authenticate(&login("admin", password.trim_end()))
        .await
        .unwrap();
    assert!(admin.admin);
    assert_eq!(admin.user_id, "local:admin");
}

#[test]
fn the_password_file_of_an_interrupted_first_start_is_replaced() {
    // A first start killed after writing the password file and before the
    // users file: the next start (or a standby taking over) goes on.
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    let password_file = dir.path().join("admin-password");
    fs::write(&password_file, "old\n").unwrap();
    assert!(
        ensure_admin(&users_file, &password_file, COST)
            .unwrap()
            .is_some()
    );
    let password = fs::read_to_string(&password_file).unwrap();
    assert_ne!(password, "old\n");
    assert_eq!(
        fs::metadata(&password_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(users_file.exists());
    let names: Vec<String> = list_users(&users_file)
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["admin"]);
}

#[test]
fn set_list_and_remove_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    assert!(list_users(&path).is_err(), "no file yet");
    let team = projects(&[("team-a", Role::Member)]);
    assert!(set_user(&path, "alice", "pw1", false, &team, COST).unwrap());
    assert!(set_user(&path, "bob", "pw2", true, &BTreeMap::new(), COST).unwrap());
    assert!(!set_user(&path, "alice", "pw3", true, &BTreeMap::new(), COST).unwrap());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = list_users(&path).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].name, "alice");
    assert!(listed[0].admin, "replaced");
    assert!(listed[0].projects.is_empty());

    remove_user(&path, "alice").unwrap();
    assert!(matches!(
        remove_user(&path, "alice"),
        Err(LocalError::NoSuchUser(_))
    ));
    assert!(matches!(
        set_password(&path, "alice", "pw", COST),
        Err(LocalError::NoSuchUser(_))
    ));
    assert_eq!(list_users(&path).unwrap().len(), 1);

    // Refused before anything is written.
    for (name, p) in [
        ("Bad", BTreeMap::new()),
        ("public", BTreeMap::new()),
        ("carol", projects(&[("Team", Role::Reader)])),
    ] {
        assert!(matches!(
            set_user(&path, name, "pw", false, &p, COST),
            Err(LocalError::InvalidName(_))
        ));
    }
    assert!(matches!(
        set_user(&path, "carol", "", false, &BTreeMap::new(), COST),
        Err(LocalError::Password)
    ));
    assert!(matches!(
        set_user(
            &path,
            "carol",
            &"x".repeat(72),
            false,
            &BTreeMap::new(),
            COST
        ),
        Err(LocalError::Password)
    ));
    assert!(matches!(
        set_user(&path, "carol", "pw", false, &BTreeMap::new(), 3),
        Err(LocalError::Cost(3))
    ));
    // An invalid file is not overwritten.
    fs::write(&path, "garbage [").unwrap();
    assert!(matches!(
        set_user(&path, "carol", "pw", false, &BTreeMap::new(), COST),
        Err(LocalError::Invalid { .. })
    ));
    assert_eq!(fs::read_to_string(&path).unwrap(), "garbage [");
    // No temp files are left behind.
    let names: BTreeSet<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["users.toml".to_owned(), "users.toml.lock".to_owned()])
    );
}

#[test]
fn roles_parse_and_imply() {
    assert_eq!("member".parse::<Role>().unwrap(), Role::Member);
    assert!(matches!("owner".parse::<Role>(), Err(LocalError::Role(_))));
    assert_eq!(Role::Reader.with_implied(), roles(&["reader"]));
    assert_eq!(
        Role::Admin.with_implied(),
        roles(&["admin", "member", "reader"])
    );
}

#[tokio::test]
async fn reauthorize_and_the_project_directory() {
    let (_dir, _path, users) = fixture();
    let alice = users.reauthorize("local:alice").await.unwrap();
    assert_eq!(alice.method, Method::RefreshToken);
    assert_eq!(alice.projects.len(), 3);
    for bad in ["alice", "local:nobody", "", "keystone-id"] {
        assert!(matches!(
            users.reauthorize(bad).await,
            Err(AuthnError::Invalid)
        ));
    }
    let directory = users.projects().await.unwrap();
    assert_eq!(
        directory.keys().collect::<Vec<_>>(),
        ["team-a", "team-b", "team-c"]
    );
    assert_eq!(directory["team-a"].id, "local:team-a");
    assert!(directory.values().all(|p| p.tags.is_empty()));
    // Through the trait the token endpoint uses.
    let backend: &dyn crate::backend::Backend = &users;
    assert_eq!(
        backend
            .authenticate(&login("root", "root-pw"))
            .await
            .unwrap()
            .user_id,
        "local:root"
    );
    assert_eq!(backend.projects().await.unwrap().len(), 3);
}

#[test]
fn secrets_stay_out_of_debug() {
    let (_dir, path, users) = fixture();
    let text = fs::read_to_string(&path).unwrap();
    let table = Table::parse(&text).unwrap();
    let hash = &table.users[0].password_hash;
    for shown in [format!("{table:?}"), format!("{users:?}")] {
        assert!(!shown.contains(hash.as_str()), "{shown}");
        assert!(!shown.contains(&users.dummy_hash), "{shown}");
    }
}

#[tokio::test]
async fn the_policy_grants_local_identities_their_roles() {
    let (_dir, _path, users) = fixture();
    let directory = users.projects().await.unwrap();
    let config = PolicyConfig::default();
    let alice = users
        .authenticate(&login("alice", "alice-pw"))
        .await
        .unwrap();
    let root = users.authenticate(&login("root", "root-pw")).await.unwrap();
    let ask = |repo: &str| Scope::parse(&format!("repository:{repo}:pull,push,delete")).unwrap();
    let granted = |who: &Identity, repo: &str| -> Vec<String> {
        grant(Some(who), &directory, &config, &[ask(repo)])
            .into_iter()
            .flat_map(|a| a.actions)
            .collect()
    };
    assert_eq!(granted(&alice, "team-a/app"), ["pull", "push"]);
    assert_eq!(granted(&alice, "team-b/app"), ["pull"]);
    assert_eq!(granted(&alice, "team-c/app"), ["pull", "push", "delete"]);
    assert_eq!(granted(&alice, "alice/app"), ["pull", "push", "delete"]);
    assert!(granted(&alice, "root/app").is_empty());
    assert!(granted(&alice, "ubuntu").is_empty());
    assert_eq!(granted(&alice, "public/app"), ["pull"]);
    for repo in ["team-a/app", "alice/app", "ubuntu", "public/app"] {
        assert_eq!(granted(&root, repo), ["pull", "push", "delete"], "{repo}");
    }
    let catalog = [Scope::parse("registry:catalog:*").unwrap()];
    assert!(grant(Some(&alice), &directory, &config, &catalog).is_empty());
    assert_eq!(grant(Some(&root), &directory, &config, &catalog).len(), 1);
}
