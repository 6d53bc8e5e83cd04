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
