//! Expiry parsing, names, rendering (decoded back), the config file.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// A UTC time from seconds since the epoch (and nanoseconds).
fn at(secs: i64, nanos: u32) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .replace_nanosecond(nanos)
        .unwrap()
}

fn credential(project_name: &str) -> PullCredential {
    PullCredential {
        id: "0123456789abcdef0123456789abcdef".into(),
        name: "berth-pull-team-20260101T000000Z".into(),
        secret: Secret::new("s3cr3t:with/odd+chars"),
        project_id: "fedcba9876543210fedcba9876543210".into(),
        project_name: project_name.into(),
        expires_at: Some(at(1_775_046_600, 0)), // 2026-04-01T12:30:00Z,
    }
}

fn meta(namespace: Option<&str>) -> SecretMeta {
    SecretMeta {
        name: "berth-pull-team".into(),
        namespace: namespace.map(str::to_owned),
        registry: "registry.example:5000".into(),
    }
}

/// Checks a `.dockerconfigjson` payload (base64) against the credential.
fn check_docker_config(b64: &str, registry: &str, c: &PullCredential) {
    let json = BASE64.decode(b64).unwrap();
    let v: Value = serde_json::from_slice(&json).unwrap();
    let entry = &v["auths"][registry];
    let user = format!("applicationcredential-{}", c.id);
    assert_eq!(entry["username"], user.as_str());
    assert_eq!(entry["password"], c.secret.expose());
    let auth = String::from_utf8(BASE64.decode(entry["auth"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(auth, format!("{user}:{}", c.secret.expose()));
    assert_eq!(v["auths"].as_object().unwrap().len(), 1);
}

#[test]
fn expires_in() {
    let after = |s: u64| Ok::<_, ()>(Expiry::After(Duration::from_secs(s)));
    let parse = |s: &str| parse_expires_in(s).map_err(|_| ());
    assert_eq!(parse("90d"), after(90 * 86_400));
    assert_eq!(parse("12h"), after(12 * 3600));
    assert_eq!(parse("30m"), after(1800));
    assert_eq!(parse("3600"), after(3600));
    assert_eq!(parse("45s"), after(45));
    assert_eq!(parse("2w"), after(14 * 86_400));
    assert_eq!(parse(" 7d "), after(7 * 86_400));
    assert_eq!(parse("never"), Ok(Expiry::Never));
    assert_eq!(parse("Never"), Ok(Expiry::Never));
    for bad in [
        "",
        "0",
        "0d",
        "d",
        "-1d",
        "1.5d",
        "12x",
        "12 h",
        "1d2h",
        "forever",
        "99999999999999999999",
        "9999999999999999d",
        "36601d",
    ] {
        let e = parse_expires_in(bad).unwrap_err();
        assert!(matches!(e, PullSecretError::Expiry { .. }), "{bad}: {e}");
        assert!(e.to_string().contains("--expires-in"), "{e}");
    }
}

#[test]
fn names_and_times() {
    let t = at(1_772_600_767, 891_000_000); // 2026-03-04T05:06:07.891Z
    assert_eq!(
        credential_name("team-a", t),
        "berth-pull-team-a-20260304T050607Z"
    );
    assert_eq!(format_time(t), "2026-03-04T05:06:07Z");
    assert_eq!(default_secret_name("team-a"), "berth-pull-team-a");
    assert_eq!(default_secret_name("My_Team  X"), "berth-pull-my-team-x");
    assert_eq!(default_secret_name("Ärger!"), "berth-pull-rger");
    assert_eq!(default_secret_name("___"), "berth-pull");
    validate_secret_name(&default_secret_name(&"x".repeat(300))).unwrap();
    for ok in ["a", "berth-pull-x", "a.b-c", "0abc"] {
        validate_secret_name(ok).unwrap();
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a b", &"a".repeat(254)] {
        assert!(validate_secret_name(bad).is_err(), "{bad}");
    }
    for ok in ["default", "team-a", "a1"] {
        validate_namespace(ok).unwrap();
    }
    for bad in ["", "a.b", "Team", "-x", &"a".repeat(64)] {
        assert!(validate_namespace(bad).is_err(), "{bad}");
    }
}

#[test]
fn registries() {
    for (given, key) in [
        ("registry.example", "registry.example"),
        ("registry.example:5000", "registry.example:5000"),
        ("https://registry.example:5000/", "registry.example:5000"),
        ("http://127.0.0.1:9001", "127.0.0.1:9001"),
        ("[::1]:9001", "[::1]:9001"),
    ] {
        assert_eq!(normalize_registry(given).unwrap(), key, "{given}");
    }
    for bad in [
        "",
        "https://",
        "host/path",
        "host:port",
        "host:0",
        "host:70000",
        "a b",
        ":5000",
        "[::1",
        "user@host",
    ] {
        let e = normalize_registry(bad).unwrap_err();
        assert!(
            matches!(e, PullSecretError::InvalidRegistry { .. }),
            "{bad}: {e}"
        );
    }
}

#[test]
fn secret_yaml_decodes_back() {
    let c = credential("team");
    let yaml = render_secret(&meta(Some("apps")), &c, SecretFormat::Yaml);
    let v: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"].as_str(), Some("v1"));
    assert_eq!(v["kind"].as_str(), Some("Secret"));
    assert_eq!(v["type"].as_str(), Some("kubernetes.io/dockerconfigjson"));
    let md = &v["metadata"];
    assert_eq!(md["name"].as_str(), Some("berth-pull-team"));
    assert_eq!(md["namespace"].as_str(), Some("apps"));
    assert_eq!(md["annotations"]["berth.io/project"].as_str(), Some("team"));
    assert_eq!(
        md["annotations"]["berth.io/application-credential-id"].as_str(),
        Some(c.id.as_str())
    );
    assert_eq!(
        md["annotations"]["berth.io/expires-at"].as_str(),
        Some("2026-04-01T12:30:00Z")
    );
    assert_eq!(
        md["labels"]["berth.io/application-credential-id"].as_str(),
        Some(c.id.as_str())
    );
    assert_eq!(
        md["labels"]["berth.io/project-id"].as_str(),
        Some(c.project_id.as_str())
    );
    let data = v["data"][".dockerconfigjson"].as_str().unwrap();
    check_docker_config(data, "registry.example:5000", &c);
    // The conventional order, and the secret only inside the base64.
    let order: Vec<usize> = ["apiVersion:", "kind:", "metadata:", "type:", "data:"]
        .iter()
        .map(|k| yaml.find(&format!("\n{k}")).map_or(0, |i| i + 1))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{yaml}");
    assert!(!yaml.contains(c.secret.expose()), "{yaml}");
}

#[test]
fn secret_yaml_without_namespace_and_with_hostile_names() {
    let mut c = credential("x\": y\n- z #: 'q' true");
    c.expires_at = None;
    let yaml = render_secret(&meta(None), &c, SecretFormat::Yaml);
    let v: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    assert!(v["metadata"].get("namespace").is_none(), "{yaml}");
    assert_eq!(
        v["metadata"]["annotations"]["berth.io/project"].as_str(),
        Some(c.project_name.as_str())
    );
    assert_eq!(
        v["metadata"]["annotations"]["berth.io/expires-at"].as_str(),
        Some("never")
    );
    // Words YAML would read as other types stay strings.
    for word in ["true", "no", "null", "0123", "1e3", "~", "-", "on"] {
        let c = credential(word);
        let yaml = render_secret(&meta(None), &c, SecretFormat::Yaml);
        let v: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(
            v["metadata"]["annotations"]["berth.io/project"].as_str(),
            Some(word),
            "{yaml}"
        );
    }
}

#[test]
fn secret_json_decodes_back() {
    let c = credential("team");
    let json = render_secret(&meta(Some("apps")), &c, SecretFormat::Json);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["metadata"]["namespace"], "apps");
    assert_eq!(
        v["metadata"]["annotations"]["berth.io/project-id"],
        c.project_id.as_str()
    );
    check_docker_config(
        v["data"][".dockerconfigjson"].as_str().unwrap(),
        "registry.example:5000",
        &c,
    );
    // The same document as the YAML.
    let yaml: Value =
        serde_norway::from_str(&render_secret(&meta(Some("apps")), &c, SecretFormat::Yaml))
            .unwrap();
    assert_eq!(yaml, v);
}

#[test]
fn debug_redacts_the_secret() {
    let c = credential("team");
    let debug = format!("{c:?}");
    assert!(!debug.contains(c.secret.expose()), "{debug}");
}

#[test]
fn config_file_is_private_and_never_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let c = credential("team");
    let text = format!("{:#}\n", docker_config("reg:1", &c));
    check_output(&path, false).unwrap();
    write_docker_config(&path, &text, false).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["auths"]["reg:1"]["password"], c.secret.expose());

    // It exists now: refused before and at writing.
    assert!(matches!(
        check_output(&path, false),
        Err(PullSecretError::OutputExists(_))
    ));
    assert!(matches!(
        write_docker_config(&path, "{}", false),
        Err(PullSecretError::OutputExists(_))
    ));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // --force replaces it, and a readable old file becomes private.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    check_output(&path, true).unwrap();
    write_docker_config(&path, "{}\n", true).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let missing = dir.path().join("no/such/dir/config.json");
    assert!(matches!(
        write_docker_config(&missing, "{}", false),
        Err(PullSecretError::Write { .. })
    ));
}

#[test]
fn scope_choice() {
    let p = |id: &str, name: &str, domain: &str| AccessibleProject {
        id: id.into(),
        name: name.into(),
        domain_id: domain.into(),
    };
    let projects = vec![p("id1", "team", "default"), p("id2", "team", "d2")];
    let default = DomainRef::Id("default".into());
    assert_eq!(
        choose_scope(&projects, "id2", None, &default),
        ProjectRef::Id("id2".into())
    );
    assert_eq!(
        choose_scope(&projects, "team", None, &default),
        ProjectRef::Name {
            name: "team".into(),
            domain: default.clone()
        }
    );
    assert_eq!(
        choose_scope(&projects, "team", Some("d2"), &default),
        ProjectRef::Name {
            name: "team".into(),
            domain: DomainRef::Id("d2".into())
        }
    );
    assert_eq!(
        choose_scope(&projects, "team", Some("Corp"), &default),
        ProjectRef::Name {
            name: "team".into(),
            domain: DomainRef::Name("Corp".into())
        }
    );
    assert_eq!(
        choose_scope(&[], "x", None, &DomainRef::Name("D".into())),
        ProjectRef::Name {
            name: "x".into(),
            domain: DomainRef::Name("D".into())
        }
    );
}

#[test]
fn error_messages() {
    let e = PullSecretError::ProjectNotAccessible {
        project: "nope".into(),
        domain: "in domain id default".into(),
        available: vec![AccessibleProject {
            id: "id1".into(),
            name: "team".into(),
            domain_id: "default".into(),
        }],
    };
    let msg = e.to_string();
    assert!(msg.contains("\"nope\"") && msg.contains("no role"), "{msg}");
    assert!(msg.contains("team (id id1, domain id default)"), "{msg}");
    let e = PullSecretError::ProjectNotAccessible {
        project: "nope".into(),
        domain: "by id".into(),
        available: vec![],
    };
    assert!(e.to_string().contains("no project"), "{e}");
    let e = PullSecretError::NoReaderRole {
        project: "team (id1)".into(),
        roles: vec!["custom".into()],
    };
    assert!(e.to_string().contains("custom") && e.to_string().contains("reader"));
}
