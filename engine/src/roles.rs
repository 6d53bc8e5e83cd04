//! Roles: `CREATE ROLE`, `ALTER ROLE`, `DROP ROLE`, and what a role may do.
//!
//! Users of the config file are superusers. Roles made with SQL are kept in
//! the catalog ([`crate::catalog::Role`]) with their password as SCRAM needs
//! it (salt and salted password, derived by the server's
//! [`PasswordHasher`]). A role without `SUPERUSER` reads only: queries,
//! `SHOW`, `SUBSCRIBE`, `EXPLAIN`, `SET`; everything that creates, drops,
//! changes or writes (tables, streams, sinks, views, `COPY ... TO`, `INSERT`,
//! roles) is refused with 42501. Object-level `GRANT` is not supported.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{self, Password, RoleOption};

use crate::catalog::Role;
use crate::error::{ErrorKind, Result, SluiceError};

/// Derives the salted password SCRAM-SHA-256 checks logins against, from a
/// password and a salt (the server's authentication decides how).
pub type PasswordHasher = Arc<dyn Fn(&str, &[u8]) -> Vec<u8> + Send + Sync>;

/// What a role statement asks for.
#[derive(Debug, Clone)]
pub(crate) enum RoleChange {
    Create {
        name: String,
        if_not_exists: bool,
        options: RoleOptions,
    },
    Alter {
        name: String,
        options: RoleOptions,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
}

/// The options Sluice understands; `None`: not given.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoleOptions {
    login: Option<bool>,
    superuser: Option<bool>,
    /// `Some(None)`: `PASSWORD NULL`.
    password: Option<Option<String>>,
}

impl RoleOptions {
    fn from_options(options: &[RoleOption]) -> Result<Self> {
        let mut out = Self::default();
        for o in options {
            match o {
                RoleOption::Login(b) => out.login = Some(*b),
                RoleOption::SuperUser(b) => out.superuser = Some(*b),
                RoleOption::Password(p) => out.password = Some(password(p)?),
                other => {
                    return Err(SluiceError::not_supported(format!(
                        "role option {other}: Sluice knows LOGIN, SUPERUSER and PASSWORD"
                    )));
                }
            }
        }
        Ok(out)
    }
}

fn password(p: &Password) -> Result<Option<String>> {
    match p {
        Password::NullPassword => Ok(None),
        Password::Password(ast::Expr::Value(v)) => match &v.value {
            ast::Value::SingleQuotedString(s) => Ok(Some(s.clone())),
            other => Err(SluiceError::invalid_parameter(format!(
                "PASSWORD takes a quoted string, not {other}"
            ))),
        },
        Password::Password(other) => Err(SluiceError::invalid_parameter(format!(
            "PASSWORD takes a quoted string, not {other}"
        ))),
    }
}

fn role_name(name: &ast::ObjectName) -> String {
    crate::parser::normalize_name(name)
}

/// The role statement in `statement`, if it is one.
pub(crate) fn role_change(statement: &ast::Statement) -> Option<Result<RoleChange>> {
    Some(match statement {
        ast::Statement::CreateRole(c) => (|| {
            if c.names.len() != 1 {
                return Err(SluiceError::not_supported("CREATE ROLE with more than one name"));
            }
            let mut options = Vec::new();
            if let Some(b) = c.login {
                options.push(RoleOption::Login(b));
            }
            if let Some(b) = c.superuser {
                options.push(RoleOption::SuperUser(b));
            }
            if let Some(p) = &c.password {
                options.push(RoleOption::Password(p.clone()));
            }
            let others = c.inherit.is_some()
                || c.bypassrls.is_some()
                || c.create_db.is_some()
                || c.create_role.is_some()
                || c.replication.is_some()
                || c.connection_limit.is_some()
                || c.valid_until.is_some()
                || !c.in_role.is_empty()
                || !c.in_group.is_empty()
                || !c.role.is_empty()
                || !c.user.is_empty()
                || !c.admin.is_empty();
            if others {
                return Err(SluiceError::not_supported(
                    "role options besides LOGIN, SUPERUSER and PASSWORD",
                ));
            }
            Ok(RoleChange::Create {
                name: role_name(&c.names[0]),
                if_not_exists: c.if_not_exists,
                options: RoleOptions::from_options(&options)?,
            })
        })(),
        ast::Statement::AlterRole { name, operation } => match operation {
            ast::AlterRoleOperation::WithOptions { options } => {
                RoleOptions::from_options(options).map(|options| RoleChange::Alter {
                    name: name.value.to_ascii_lowercase(),
                    options,
                })
            }
            other => Err(SluiceError::not_supported(format!("ALTER ROLE ... {other}"))),
        },
        ast::Statement::Drop {
            object_type: ast::ObjectType::Role,
            if_exists,
            names,
            ..
        } => Ok(RoleChange::Drop {
            names: names.iter().map(role_name).collect(),
            if_exists: *if_exists,
        }),
        _ => return None,
    })
}

/// Carries out a role statement on the catalog; returns the command tag.
pub(crate) async fn apply(
    engine: &crate::Engine,
    change: &RoleChange,
    reserved: impl Fn(&str) -> bool,
) -> Result<&'static str> {
    let mut catalog = engine.inner.catalog.lock().await;
    let hash = |pw: &Option<String>| -> Result<Option<(String, String)>> {
        let Some(pw) = pw else { return Ok(None) };
        let hasher = engine.inner.password_hasher.as_ref().ok_or_else(|| {
            SluiceError::not_supported("this server has no password authentication to store passwords for")
        })?;
        let salt: [u8; 16] = rand_salt();
        Ok(Some((hex(&salt), hex(&hasher(pw, &salt)))))
    };
    match change {
        RoleChange::Create {
            name,
            if_not_exists,
            options,
        } => {
            if reserved(name) {
                return Err(SluiceError::new(
                    ErrorKind::DuplicateObject,
                    format!("role \"{name}\" already exists (in the config file)"),
                ));
            }
            if catalog.role(name).is_some() {
                if *if_not_exists {
                    return Ok("CREATE ROLE");
                }
                return Err(SluiceError::new(
                    ErrorKind::DuplicateObject,
                    format!("role \"{name}\" already exists"),
                ));
            }
            let role = Role {
                name: name.clone(),
                // As Postgres: CREATE ROLE makes a role that can't log in
                // unless it says LOGIN.
                login: options.login.unwrap_or(false),
                superuser: options.superuser.unwrap_or(false),
                password: hash(&options.password.clone().flatten())?,
            };
            catalog.put_role(role)?;
            Ok("CREATE ROLE")
        }
        RoleChange::Alter { name, options } => {
            let Some(mut role) = catalog.role(name).cloned() else {
                let why = if reserved(name) {
                    "is defined in the config file; change it there"
                } else {
                    "does not exist"
                };
                return Err(SluiceError::new(
                    ErrorKind::UndefinedObject,
                    format!("role \"{name}\" {why}"),
                ));
            };
            if let Some(b) = options.login {
                role.login = b;
            }
            if let Some(b) = options.superuser {
                role.superuser = b;
            }
            if let Some(pw) = &options.password {
                role.password = hash(pw)?;
            }
            catalog.put_role(role)?;
            Ok("ALTER ROLE")
        }
        RoleChange::Drop { names, if_exists } => {
            for name in names {
                if !catalog.remove_role(name)? && !*if_exists {
                    return Err(SluiceError::new(
                        ErrorKind::UndefinedObject,
                        format!("role \"{name}\" does not exist"),
                    ));
                }
            }
            Ok("DROP ROLE")
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from a hex string written by [`hex`].
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// A salt: it only has to differ between roles and passwords, not be
/// secret; the standard library's randomly keyed hasher gives one.
fn rand_salt() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
