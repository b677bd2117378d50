//! `berth users`: the local users file of the embedded default (when no
//! Keystone is configured). The file's format and rules live in
//! `berth_identity::authn::local`; this reads passwords from standard input
//! or generates them, and never takes one as an argument (it would show in
//! `ps` and the shell history).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use anyhow::Context;
use berth_identity::authn::local::{self, DEFAULT_BCRYPT_COST, Role};
use clap::{Args, Subcommand};

use crate::cli::ConfigArgs;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// List users, their projects and roles (no hashes).
    List(ConfigArgs),
    /// Add a user, or replace one (password, admin flag and projects).
    Add(AddArgs),
    /// Set a user's password.
    Passwd(NameArgs),
    /// Remove a user.
    Remove(NameArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The user name (lower case; also their namespace).
    pub name: String,
    /// Make the user a registry administrator.
    #[arg(long)]
    pub admin: bool,
    /// A project and the user's role on it: `team=member` (roles:
    /// reader, member, admin). Repeatable.
    #[arg(long = "project", value_name = "PROJECT=ROLE")]
    pub projects: Vec<String>,
    /// Read the password from standard input instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    pub name: String,
    /// Read the password from standard input instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The users file of the configuration; with `create`, its directory is
/// made (mode 0700) when missing.
fn users_file(config: &ConfigArgs, create: bool) -> anyhow::Result<PathBuf> {
    let path = config.load()?.config.users_file();
    if create {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    } else if !path.exists() {
        anyhow::bail!(
            "there is no users file at {} yet: `berth serve` creates it on first start, `berth users add` too",
            path.display()
        );
    }
    Ok(path)
}

pub fn run(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::List(config) => {
            let path = users_file(&config, false)?;
            let mut out = String::new();
            for user in local::list_users(&path)? {
                let projects: Vec<String> = user
                    .projects
                    .iter()
                    .map(|(p, r)| format!("{p}={r}"))
                    .collect();
                out.push_str(&format!(
                    "{}{}{}\n",
                    user.name,
                    if user.admin { " (admin)" } else { "" },
                    if projects.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", projects.join(","))
                    }
                ));
            }
            crate::cli::write_stdout(&out)
        }
        UsersCommand::Add(args) => {
            let path = users_file(&args.config, true)?;
            let mut projects = BTreeMap::new();
            for p in &args.projects {
                let (name, role) = p
                    .split_once('=')
                    .with_context(|| format!("--project {p}: expected PROJECT=ROLE"))?;
                projects.insert(name.to_owned(), role.parse::<Role>()?);
            }
            let (password, generated) = password(args.password_stdin)?;
            let added = local::set_user(
                &path,
                &args.name,
                &password,
                args.admin,
                &projects,
                DEFAULT_BCRYPT_COST,
            )?;
            eprintln!(
                "{} user {} in {}",
                if added { "added" } else { "replaced" },
                args.name,
                path.display()
            );
            if generated {
                println!("{password}");
            }
            Ok(())
        }
        UsersCommand::Passwd(args) => {
            let path = users_file(&args.config, false)?;
            let (password, generated) = password(args.password_stdin)?;
            local::set_password(&path, &args.name, &password, DEFAULT_BCRYPT_COST)?;
            eprintln!("password of {} changed", args.name);
            if generated {
                println!("{password}");
            }
            Ok(())
        }
        UsersCommand::Remove(args) => {
            let path = users_file(&args.config, false)?;
            local::remove_user(&path, &args.name)?;
            eprintln!("removed user {}", args.name);
            Ok(())
        }
    }
}

/// The password from standard input (one line), or a generated one
/// (printed once on standard output).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut s)
            .context("cannot read the password from standard input")?;
        let p = s.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!p.is_empty(), "empty password on standard input");
        Ok((p, false))
    } else {
        Ok((local::generate_password()?, true))
    }
}
