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
use pgwire::error::{PgWireError, PgWireResult};
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
        pids: Arc<RandomPidSecretKeyGenerator>,
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
            Startup::Trust {
                params,
                connections,
                pids,
            } => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    let (pid, secret) = pids.generate(client);
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

/// Who may log in: the users of the config (superusers; the embedded
/// default is one user `sluice` with password `sluice`), then the roles made
/// with `CREATE ROLE ... LOGIN PASSWORD` (kept by the engine).
#[derive(Debug, Clone)]
pub struct Users {
    users: Arc<BTreeMap<String, String>>,
    engine: sluice_engine::Engine,
}

impl Users {
    pub fn new(users: BTreeMap<String, String>, engine: sluice_engine::Engine) -> Self {
        Self {
            users: Arc::new(users),
            engine,
        }
    }

    /// Whether `user` may change things: config users and `SUPERUSER`
    /// roles; any other name (only `trust` lets one in) too.
    pub async fn is_superuser(&self, user: &str) -> bool {
        if self.users.contains_key(user) {
            return true;
        }
        self.engine.role(user).await.is_none_or(|r| r.superuser)
    }

    /// Whether `password` is `user`'s (for the HTTP console's login): a
    /// config user's password, or a login role's salted one. Unknown users
    /// cost the same work as known ones.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        if let Some(p) = self.users.get(user) {
            return constant_time_eq(p.as_bytes(), password.as_bytes());
        }
        let (salt, stored) = match self
            .engine
            .role(user)
            .await
            .and_then(|r| r.password.filter(|_| r.login))
        {
            Some((salt, hashed)) => (
                sluice_engine::roles::unhex(&salt).unwrap_or_default(),
                sluice_engine::roles::unhex(&hashed).unwrap_or_default(),
            ),
            None => (rand::random::<[u8; 16]>().to_vec(), vec![]),
        };
        let password = password.to_string();
        let hashed =
            tokio::task::spawn_blocking(move || gen_salted_password(&password, &salt, SCRAM_ITERATIONS))
                .await
                .unwrap_or_default();
        !stored.is_empty() && constant_time_eq(&hashed, &stored)
    }

    /// A role's stored salt and salted password, if it may log in.
    async fn role_password(&self, user: &str) -> Option<Password> {
        let role = self.engine.role(user).await?;
        let (salt, hashed) = role.password.filter(|_| role.login)?;
        let salt = sluice_engine::roles::unhex(&salt)?;
        let hashed = sluice_engine::roles::unhex(&hashed)?;
        Some(Password::new(Some(salt), hashed))
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        // An unknown user gets a random password nobody knows, salted and
        // hashed like a real one: the login then fails at the same step,
        // with the same message and after the same work as a wrong
        // password, so user names cannot be probed.
        let unknown;
        let password = match self.users.get(user) {
            Some(p) => p.as_str(),
            None => {
                if let Some(stored) = self.role_password(user).await {
                    return Ok(stored);
                }
                unknown = hex(&rand::random::<[u8; 32]>());
                unknown.as_str()
            }
        };
        let salt: [u8; 16] = rand::random();
        let hashed = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt.to_vec()), hashed))
    }
}

/// Equal bytes, compared in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Failed logins per client address: once an address has failed
/// `max_failures` times within `window`, its next logins are refused
/// without looking at the password until the oldest failure leaves the
/// window (a brake on password guessing; the wire protocol has no other).
#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: usize,
    window: std::time::Duration,
    failures: std::sync::Mutex<
        std::collections::HashMap<std::net::IpAddr, std::collections::VecDeque<std::time::Instant>>,
    >,
}

impl LoginThrottle {
    /// `max_failures` 0 turns the brake off.
    pub fn new(max_failures: usize, window: std::time::Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Default::default(),
        }
    }

    /// Ok when `ip` may try to log in, else how long until it may.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut all = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = all.get_mut(&ip) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.max_failures {
            let oldest = *times.front().expect("not empty");
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let mut all = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() > 10_000 {
            // Many addresses: forget those with no failure in the window.
            let window = self.window;
            all.retain(|_, t| t.back().is_some_and(|last| now.duration_since(*last) < window));
        }
        let times = all.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_too_many_failures_in_the_window() {
        let t = LoginThrottle::new(3, std::time::Duration::from_millis(200));
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        assert!(t.check(a).is_err());
        assert!(t.check(b).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(t.check(a).is_ok());
        assert!(
            LoginThrottle::new(0, std::time::Duration::from_secs(1))
                .check(a)
                .is_ok()
        );
    }
}
