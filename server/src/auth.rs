//! Password authentication (SCRAM-SHA-256) against the users in the config.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// SCRAM iteration count; Postgres's default.
pub const SCRAM_ITERATIONS: usize = 4096;

/// Users and their passwords, from the config (the embedded default is one
/// user `sluice` with password `sluice`).
#[derive(Debug, Clone)]
pub struct Users {
    users: Arc<BTreeMap<String, String>>,
}

impl Users {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users: Arc::new(users),
        }
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let Some(password) = self.users.get(user) else {
            // Same error as a wrong password, so user names cannot be probed.
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            ))));
        };
        let salt: [u8; 16] = rand_salt();
        let hashed = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt.to_vec()), hashed))
    }
}

/// A per-login salt. It only has to differ between logins, not be secret,
/// so the standard library's randomly keyed hasher is enough.
fn rand_salt() -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
