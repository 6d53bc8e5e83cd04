//! What `pg_catalog.pg_roles` lists (psql's `\du`, pgAdmin's login roles):
//! the users of the config file (superusers that log in) and the roles
//! made with `CREATE ROLE`, read when the table is queried.

use async_trait::async_trait;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role};
use sluice_engine::Engine;

/// The roles pg_catalog shows.
#[derive(Clone)]
pub(crate) struct Roles {
    engine: Engine,
    config_users: Vec<String>,
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roles")
            .field("config_users", &self.config_users)
            .finish()
    }
}

impl Roles {
    pub(crate) fn new(engine: Engine, config_users: Vec<String>) -> Self {
        Self { engine, config_users }
    }
}

/// The role that owns what has no recorded owner and is shown with
/// Postgres's bootstrap superuser oid (10): the first user of the config
/// file (`sluice` without one).
pub(crate) fn bootstrap_user(engine: &Engine) -> String {
    engine
        .config_users()
        .first()
        .cloned()
        .unwrap_or_else(|| "sluice".to_string())
}

/// The oid a role is shown with in pg_catalog: 10 for the bootstrap user,
/// else a number made from the name (Sluice keeps no oids for roles; the
/// same name gives the same oid across restarts).
pub(crate) fn role_oid(name: &str, bootstrap: &str) -> i32 {
    if name == bootstrap {
        return 10;
    }
    // FNV-1a, into the range Postgres gives objects users create.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    16384 + (h % (i32::MAX as u32 - 16384)) as i32
}

fn role(name: &str, superuser: bool, login: bool) -> Role {
    Role {
        name: name.to_string(),
        is_superuser: superuser,
        can_login: login,
        can_create_db: superuser,
        can_create_role: superuser,
        can_create_user: superuser,
        can_replication: false,
        grants: vec![],
        inherited_roles: vec![],
    }
}

#[async_trait]
impl PgCatalogContextProvider for Roles {
    async fn roles(&self) -> Vec<String> {
        let mut names = self.config_users.clone();
        for r in self.engine.roles().await {
            if !names.contains(&r.name) {
                names.push(r.name);
            }
        }
        names.sort();
        names
    }

    async fn role(&self, name: &str) -> Option<Role> {
        if self.config_users.iter().any(|u| u == name) {
            return Some(role(name, true, true));
        }
        let r = self.engine.role(name).await?;
        Some(role(&r.name, r.superuser, r.login))
    }
}
