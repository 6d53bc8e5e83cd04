//! Authentication: SCRAM-SHA-256 against the users in the config (the
//! default), or `trust` (no password, like pg_hba's trust) for local
//! development and protocol-level tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use serde::Deserialize;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// Password authentication with SCRAM-SHA-256.
    #[default]
    #[serde(rename = "scram-sha-256")]
    Scram,
    /// Anyone who can connect is let in, under the user name they give.
    #[serde(rename = "trust")]
    Trust,
}

/// The startup handler for one connection.
pub enum Startup {
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
    Trust {
        params: Arc<DefaultServerParameterProvider>,
        connections: Arc<ConnectionManager>,
    },
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Scram(h) => h.on_startup(client, message).await,
            Startup::Trust { params, connections } => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                    client.set_pid_and_secret_key(pid, secret.clone());
                    // Registered like the SCRAM handler does, so cancel
                    // requests reach this connection.
                    let (handle, guard) = connections.register(pid, secret);
                    client
                        .session_extensions()
                        .insert::<Arc<ConnectionHandle>>(handle);
                    client.session_extensions().insert::<ConnectionGuard>(guard);
                    finish_authentication(client, params.as_ref()).await?;
                }
                Ok(())
            }
        }
    }
}

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
