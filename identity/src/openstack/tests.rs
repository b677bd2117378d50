//! Resolution of the caller's credentials from explicit environments: the
//! process environment is never read or changed.

use std::path::Path;

use super::*;

/// A sandbox: `cwd/`, `home/`, `etc/` (the only system directory).
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for d in ["cwd", "home/.config/openstack", "etc"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Sandbox { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(&self, vars: &[(&str, &str)]) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cwd: self.path("cwd"),
            home: Some(self.path("home")),
            system_dirs: vec![self.path("etc")],
        }
    }
}

fn resolve(env: &Environment) -> ClientConfig {
    ClientConfig::resolve(env).unwrap()
}

fn password_of(c: &ClientConfig) -> (&UserRef, &str) {
    match &c.credential {
        Credential::Password { user, password } => (user, password.expose()),
        other => panic!("{other:?}"),
    }
}

const OPENRC: &[(&str, &str)] = &[
    ("OS_AUTH_URL", "https://keystone.example:5000"),
    ("OS_USERNAME", "alice"),
    ("OS_PASSWORD", "env-pw"),
];

fn cloud_yaml(name: &str, auth_url: &str) -> String {
    format!(
        "clouds:\n  {name}:\n    auth:\n      auth_url: {auth_url}\n      username: yaml-user\n      \
         password: yaml-pw\n      project_name: yaml-project\n      user_domain_name: Corp\n    \
         region_name: RegionOne\n    identity_api_version: 3\n"
    )
}

#[test]
fn openrc_variables_alone() {
    let sb = Sandbox::new();
    let c = resolve(&sb.env(OPENRC));
    assert_eq!(c.identity_url, "https://keystone.example:5000/v3");
    let (user, pw) = password_of(&c);
    assert_eq!(
        user,
        &UserRef::Name {
            name: "alice".into(),
            domain: DomainRef::Id("default".into())
        }
    );
    assert_eq!(pw, "env-pw");
    assert_eq!(c.project, None);
    assert_eq!(c.project_domain, DomainRef::Id("default".into()));
    assert_eq!(c.cacert, None);
    assert!(c.source.contains("OS_*"), "{}", c.source);
}

#[test]
fn auth_url_forms() {
    for (given, v3) in [
        ("http://k:5000", "http://k:5000/v3"),
        ("http://k:5000/", "http://k:5000/v3"),
        ("http://k:5000/v3", "http://k:5000/v3"),
        ("http://k:5000/v3/", "http://k:5000/v3"),
        ("https://cloud/identity", "https://cloud/identity/v3"),
    ] {
        let sb = Sandbox::new();
        let mut vars = OPENRC.to_vec();
        vars[0] = ("OS_AUTH_URL", given);
        assert_eq!(resolve(&sb.env(&vars)).identity_url, v3, "{given}");
    }
    for bad in ["http://k:5000/v2.0", "ftp://k", "not a url"] {
        let sb = Sandbox::new();
        let mut vars = OPENRC.to_vec();
        vars[0] = ("OS_AUTH_URL", bad);
        let e = ClientConfig::resolve(&sb.env(&vars)).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    setting: "auth_url",
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
}

#[test]
fn no_credentials_at_all() {
    let sb = Sandbox::new();
    // A clouds.yaml alone does not count: OS_CLOUD chooses a cloud.
    sb.write("cwd/clouds.yaml", &cloud_yaml("c", "http://k:5000"));
    let e = ClientConfig::resolve(&sb.env(&[("OS_USERNAME", "alice")])).unwrap_err();
    assert!(matches!(e, ConfigError::NoCredentials), "{e}");
    assert!(e.to_string().contains("OS_CLOUD"), "{e}");
    // Empty variables are unset ones.
    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", ""), ("OS_AUTH_URL", "")])).unwrap_err();
    assert!(matches!(e, ConfigError::NoCredentials), "{e}");
}

#[test]
fn missing_pieces_are_named() {
    let sb = Sandbox::new();
    let e = ClientConfig::resolve(&sb.env(&[("OS_AUTH_URL", "http://k"), ("OS_USERNAME", "a")]))
        .unwrap_err();
    assert!(e.to_string().contains("OS_PASSWORD"), "{e}");
    let e = ClientConfig::resolve(&sb.env(&[("OS_AUTH_URL", "http://k"), ("OS_PASSWORD", "p")]))
        .unwrap_err();
    assert!(e.to_string().contains("OS_USERNAME"), "{e}");
    sb.write(
        "cwd/clouds.yaml",
        "clouds:\n  c:\n    auth:\n      username: u\n",
    );
    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", "c")])).unwrap_err();
    assert!(e.to_string().contains("auth_url"), "{e}");
    assert!(e.to_string().contains("cloud \"c\""), "{e}");
}

#[test]
fn clouds_yaml_search_order() {
    let sb = Sandbox::new();
    let etc = sb.write("etc/clouds.yaml", &cloud_yaml("c", "http://etc"));
    let env = sb.env(&[("OS_CLOUD", "c")]);
    assert_eq!(resolve(&env).identity_url, "http://etc/v3");
    assert!(resolve(&env).source.contains(&etc.display().to_string()));
    sb.write(
        "home/.config/openstack/clouds.yaml",
        &cloud_yaml("c", "http://home"),
    );
    assert_eq!(resolve(&env).identity_url, "http://home/v3");
    sb.write("cwd/clouds.yml", &cloud_yaml("c", "http://cwd-yml"));
    assert_eq!(resolve(&env).identity_url, "http://cwd-yml/v3");
    sb.write("cwd/clouds.yaml", &cloud_yaml("c", "http://cwd"));
    assert_eq!(resolve(&env).identity_url, "http://cwd/v3");
    let explicit = sb.write(
        "elsewhere/my-clouds.yaml",
        &cloud_yaml("c", "http://explicit"),
    );
    let env = sb.env(&[
        ("OS_CLOUD", "c"),
        ("OS_CLIENT_CONFIG_FILE", explicit.to_str().unwrap()),
    ]);
    assert_eq!(resolve(&env).identity_url, "http://explicit/v3");
    // $XDG_CONFIG_HOME/openstack comes after ~/.config/openstack.
    let sb = Sandbox::new();
    sb.write("xdg/openstack/clouds.yaml", &cloud_yaml("c", "http://xdg"));
    let xdg = sb.path("xdg");
    let env = sb.env(&[
        ("OS_CLOUD", "c"),
        ("XDG_CONFIG_HOME", xdg.to_str().unwrap()),
    ]);
    assert_eq!(resolve(&env).identity_url, "http://xdg/v3");
}

#[test]
fn clouds_json_is_read_too() {
    let sb = Sandbox::new();
    sb.write(
        "cwd/clouds.json",
        r#"{"clouds": {"j": {"auth": {"auth_url": "http://json:5000/v3",
            "username": "u", "password": "p"}}}}"#,
    );
    assert_eq!(
        resolve(&sb.env(&[("OS_CLOUD", "j")])).identity_url,
        "http://json:5000/v3"
    );
}

#[test]
fn the_cloud_from_clouds_yaml() {
    let sb = Sandbox::new();
    sb.write(
        "cwd/clouds.yaml",
        &(cloud_yaml("mine", "http://k:5000/v3")
            + "  other:\n    auth:\n      auth_url: http://other\n"),
    );
    let c = resolve(&sb.env(&[("OS_CLOUD", "mine")]));
    let (user, pw) = password_of(&c);
    assert_eq!(
        user,
        &UserRef::Name {
            name: "yaml-user".into(),
            domain: DomainRef::Name("Corp".into())
        }
    );
    assert_eq!(pw, "yaml-pw");
    assert_eq!(
        c.project,
        Some(ProjectRef::Name {
            name: "yaml-project".into(),
            domain: DomainRef::Id("default".into())
        })
    );
    assert!(c.source.contains("cloud \"mine\""), "{}", c.source);

    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", "nope")])).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::UnknownCloud { .. }), "{msg}");
    assert!(msg.contains("mine") && msg.contains("other"), "{msg}");
}

#[test]
fn os_cloud_without_a_file_names_the_places_searched() {
    let sb = Sandbox::new();
    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", "c")])).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::NoCloudsFile { .. }), "{msg}");
    assert!(
        msg.contains(&sb.path("cwd/clouds.yaml").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&sb.path("etc/clouds.yaml").display().to_string()),
        "{msg}"
    );
}

#[test]
fn unparsable_clouds_yaml() {
    let sb = Sandbox::new();
    let p = sb.write("cwd/clouds.yaml", "clouds: [unclosed\n");
    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", "c")])).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    assert!(e.to_string().contains(&p.display().to_string()), "{e}");
}

#[test]
fn secure_yaml_is_merged_over_clouds_yaml() {
    let sb = Sandbox::new();
    sb.write(
        "cwd/clouds.yaml",
        "clouds:\n  c:\n    auth:\n      auth_url: http://k\n      username: u\n      \
         project_name: p\n",
    );
    // secure.yaml from the home directory (none in cwd): found the same way.
    sb.write(
        "home/.config/openstack/secure.yaml",
        "clouds:\n  c:\n    auth:\n      password: from-secure\n",
    );
    let c = resolve(&sb.env(&[("OS_CLOUD", "c")]));
    assert_eq!(password_of(&c).1, "from-secure");
    // Key by key: the rest of `auth` stays.
    assert_eq!(
        c.project,
        Some(ProjectRef::Name {
            name: "p".into(),
            domain: DomainRef::Id("default".into())
        })
    );
    // OS_CLIENT_SECURE_FILE first; it overrides values of clouds.yaml too.
    let secure = sb.write(
        "elsewhere/sec.yaml",
        "clouds:\n  c:\n    auth:\n      password: explicit-secure\n      username: secure-user\n",
    );
    let c = resolve(&sb.env(&[
        ("OS_CLOUD", "c"),
        ("OS_CLIENT_SECURE_FILE", secure.to_str().unwrap()),
    ]));
    let (user, pw) = password_of(&c);
    assert_eq!(pw, "explicit-secure");
    assert!(matches!(user, UserRef::Name { name, .. } if name == "secure-user"));
    // A cloud defined in secure.yaml only.
    sb.write(
        "cwd/secure.yaml",
        "clouds:\n  hidden:\n    auth:\n      auth_url: http://h\n      username: u\n      \
         password: p\n",
    );
    assert_eq!(
        resolve(&sb.env(&[("OS_CLOUD", "hidden")])).identity_url,
        "http://h/v3"
    );
}

#[test]
fn os_variables_override_the_cloud() {
    let sb = Sandbox::new();
    sb.write(
        "cwd/clouds.yaml",
        "clouds:\n  c:\n    auth:\n      auth_url: http://k\n      user_id: uid-from-file\n      \
         password: file-pw\n      project_id: pid-from-file\n      project_domain_id: pd-file\n",
    );
    // Without variables: the file.
    let c = resolve(&sb.env(&[("OS_CLOUD", "c")]));
    assert_eq!(password_of(&c).0, &UserRef::Id("uid-from-file".into()));
    assert_eq!(c.project, Some(ProjectRef::Id("pid-from-file".into())));
    assert_eq!(c.project_domain, DomainRef::Id("pd-file".into()));
    // OS_PASSWORD wins; OS_USERNAME replaces the file's user_id, and
    // OS_PROJECT_NAME its project_id; OS_PROJECT_DOMAIN_NAME its id.
    let c = resolve(&sb.env(&[
        ("OS_CLOUD", "c"),
        ("OS_PASSWORD", "env-pw"),
        ("OS_USERNAME", "bob"),
        ("OS_USER_DOMAIN_ID", "ud"),
        ("OS_PROJECT_NAME", "proj"),
        ("OS_PROJECT_DOMAIN_NAME", "PD"),
    ]));
    let (user, pw) = password_of(&c);
    assert_eq!(pw, "env-pw");
    assert_eq!(
        user,
        &UserRef::Name {
            name: "bob".into(),
            domain: DomainRef::Id("ud".into())
        }
    );
    assert_eq!(
        c.project,
        Some(ProjectRef::Name {
            name: "proj".into(),
            domain: DomainRef::Name("PD".into())
        })
    );
    // Both of a pair from the environment: the id wins, as in Keystone.
    let c = resolve(&sb.env(&[
        ("OS_CLOUD", "c"),
        ("OS_USERNAME", "bob"),
        ("OS_USER_ID", "uid-env"),
    ]));
    assert_eq!(password_of(&c).0, &UserRef::Id("uid-env".into()));
    // OS_AUTH_URL overrides too.
    let c = resolve(&sb.env(&[("OS_CLOUD", "c"), ("OS_AUTH_URL", "http://env:5000")]));
    assert_eq!(c.identity_url, "http://env:5000/v3");
}

#[test]
fn legacy_tenant_variables_are_aliases() {
    let sb = Sandbox::new();
    let mut vars = OPENRC.to_vec();
    vars.push(("OS_TENANT_NAME", "legacy"));
    let c = resolve(&sb.env(&vars));
    assert!(matches!(&c.project, Some(ProjectRef::Name { name, .. }) if name == "legacy"));
    // OS_PROJECT_NAME is preferred.
    vars.push(("OS_PROJECT_NAME", "modern"));
    let c = resolve(&sb.env(&vars));
    assert!(matches!(&c.project, Some(ProjectRef::Name { name, .. }) if name == "modern"));
}

#[test]
fn domain_defaults() {
    let sb = Sandbox::new();
    let user_domain = |vars: &[(&str, &str)]| {
        let mut all = OPENRC.to_vec();
        all.extend_from_slice(vars);
        let c = resolve(&sb.env(&all));
        let UserRef::Name { domain, .. } = password_of(&c).0.clone() else {
            panic!()
        };
        (domain, c.project_domain)
    };
    let id = |s: &str| DomainRef::Id(s.into());
    let name = |s: &str| DomainRef::Name(s.into());
    assert_eq!(user_domain(&[]), (id("default"), id("default")));
    assert_eq!(
        user_domain(&[("OS_USER_DOMAIN_NAME", "Default")]),
        (name("Default"), id("default"))
    );
    assert_eq!(
        user_domain(&[("OS_USER_DOMAIN_ID", "u1"), ("OS_PROJECT_DOMAIN_NAME", "P")]),
        (id("u1"), name("P"))
    );
    // The id wins over the name when both are set.
    assert_eq!(
        user_domain(&[("OS_USER_DOMAIN_ID", "u1"), ("OS_USER_DOMAIN_NAME", "U")]).0,
        id("u1")
    );
    // OS_DOMAIN_* serves both; OS_DEFAULT_DOMAIN (an id) after it.
    assert_eq!(
        user_domain(&[("OS_DOMAIN_NAME", "Both")]),
        (name("Both"), name("Both"))
    );
    assert_eq!(
        user_domain(&[("OS_DEFAULT_DOMAIN", "d9")]),
        (id("d9"), id("d9"))
    );
    assert_eq!(
        user_domain(&[("OS_DEFAULT_DOMAIN", "d9"), ("OS_PROJECT_DOMAIN_ID", "p2")]),
        (id("d9"), id("p2"))
    );
}

#[test]
fn insecure_is_refused_and_cacert_kept() {
    let sb = Sandbox::new();
    for v in ["true", "1", "True", "yes"] {
        let mut vars = OPENRC.to_vec();
        vars.push(("OS_INSECURE", v));
        let e = ClientConfig::resolve(&sb.env(&vars)).unwrap_err();
        assert!(matches!(e, ConfigError::Insecure { .. }), "{v}: {e}");
        assert!(e.to_string().contains("OS_CACERT"), "{e}");
    }
    let mut vars = OPENRC.to_vec();
    vars.push(("OS_INSECURE", "false"));
    vars.push(("OS_CACERT", "/etc/ssl/my-ca.pem"));
    let c = resolve(&sb.env(&vars));
    assert_eq!(c.cacert.as_deref(), Some(Path::new("/etc/ssl/my-ca.pem")));
    let mut vars = OPENRC.to_vec();
    vars.push(("OS_INSECURE", "perhaps"));
    assert!(matches!(
        ClientConfig::resolve(&sb.env(&vars)).unwrap_err(),
        ConfigError::Invalid { .. }
    ));

    sb.write(
        "cwd/clouds.yaml",
        "clouds:\n  v:\n    verify: false\n    auth: {auth_url: 'http://k', username: u, password: p}\n  \
         ca:\n    cacert: /ca.pem\n    auth: {auth_url: 'http://k', username: u, password: p}\n  \
         capath:\n    verify: /bundle.pem\n    auth: {auth_url: 'http://k', username: u, password: p}\n",
    );
    let e = ClientConfig::resolve(&sb.env(&[("OS_CLOUD", "v")])).unwrap_err();
    assert!(matches!(e, ConfigError::Insecure { .. }), "{e}");
    let c = resolve(&sb.env(&[("OS_CLOUD", "ca")]));
    assert_eq!(c.cacert.as_deref(), Some(Path::new("/ca.pem")));
    let c = resolve(&sb.env(&[("OS_CLOUD", "capath")]));
    assert_eq!(c.cacert.as_deref(), Some(Path::new("/bundle.pem")));
    // OS_CACERT overrides the file's.
    let c = resolve(&sb.env(&[("OS_CLOUD", "ca"), ("OS_CACERT", "/env.pem")]));
    assert_eq!(c.cacert.as_deref(), Some(Path::new("/env.pem")));
}

#[test]
fn application_credentials_and_auth_types() {
    let sb = Sandbox::new();
    let c = resolve(&sb.env(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_ID", "acid"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "acsecret"),
    ]));
    match &c.credential {
        Credential::ApplicationCredential { id, secret, .. } => {
            assert_eq!(id.as_deref(), Some("acid"));
            assert_eq!(secret.expose(), "acsecret");
        }
        other => panic!("{other:?}"),
    }
    // Guessed from the variables, as the openstack CLI does.
    let c = resolve(&sb.env(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_APPLICATION_CREDENTIAL_ID", "acid"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "acsecret"),
    ]));
    assert!(matches!(
        c.credential,
        Credential::ApplicationCredential { .. }
    ));
    // By name it needs the user.
    let e = ClientConfig::resolve(&sb.env(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "n"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
    ]))
    .unwrap_err();
    assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    let c = resolve(&sb.env(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "n"),
        ("OS_USERNAME", "u"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
    ]));
    assert!(matches!(
        c.credential,
        Credential::ApplicationCredential {
            user: Some(UserRef::Name { .. }),
            ..
        }
    ));
    for ok in ["password", "v3password", "PASSWORD"] {
        let mut vars = OPENRC.to_vec();
        vars.push(("OS_AUTH_TYPE", ok));
        assert!(matches!(
            resolve(&sb.env(&vars)).credential,
            Credential::Password { .. }
        ));
    }
    for bad in ["token", "v3oidcpassword", "v3totp"] {
        let mut vars = OPENRC.to_vec();
        vars.push(("OS_AUTH_TYPE", bad));
        let e = ClientConfig::resolve(&sb.env(&vars)).unwrap_err();
        assert!(
            matches!(e, ConfigError::UnsupportedAuthType(_)),
            "{bad}: {e}"
        );
    }
    let mut vars = OPENRC.to_vec();
    vars.push(("OS_IDENTITY_API_VERSION", "2"));
    assert!(matches!(
        ClientConfig::resolve(&sb.env(&vars)).unwrap_err(),
        ConfigError::Invalid {
            setting: "identity_api_version",
            ..
        }
    ));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let sb = Sandbox::new();
    let c = resolve(&sb.env(OPENRC));
    let debug = format!("{c:?}");
    assert!(!debug.contains("env-pw"), "{debug}");
    assert!(debug.contains("alice"), "{debug}");
}
