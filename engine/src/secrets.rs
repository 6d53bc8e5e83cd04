//! Which connector options hold secrets, and how options are shown.
//!
//! Passwords, secret keys and tokens are given as connector options
//! (`properties.sasl.password`, `s3.secret_access_key`, ...). The catalog
//! keeps them (a restart needs them), but everything that shows options to
//! a user (SHOW STREAMS, SHOW SINKS, logs) goes through [`options_text`],
//! which prints `********` for their values.

use std::collections::BTreeMap;

/// What a secret's value is shown as.
pub const MASK: &str = "********";

/// True for option names that hold secrets: any part naming a password,
/// secret, token, credential or private key (`properties.sasl.password`,
/// `s3.secret_access_key`, `properties.sasl.oauthbearer.token`,
/// `properties.ssl.key.pem`), or ending in `_key` / `.key` other than the
/// Kafka sink's `key` (a column list) and `*.key_id` / `access_key_id`
/// (identifiers, not secrets).
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    const WORDS: [&str; 6] = ["password", "passwd", "secret", "token", "credential", "private"];
    if WORDS.iter().any(|w| n.contains(w)) {
        return true;
    }
    if n == "key" || n.starts_with("key.") {
        return false;
    }
    n.ends_with("_key") || n.ends_with(".key") || n.contains(".key.pem")
}

/// Options as `k=v, ...` for display: `connector` left out (shown in a
/// column of its own), secrets masked, references to secrets by name.
pub fn options_text(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .filter(|(k, _)| k.as_str() != "connector")
        .map(|(k, v)| {
            if let Some(name) = reference(v) {
                format!("{k}=SECRET {name}")
            } else if is_secret(k) {
                format!("{k}={MASK}")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How an option value that names a secret (`key = SECRET name`) is held
/// until it is resolved: a NUL cannot occur in SQL text (the wire protocol
/// ends strings with it), so no quoted value can look like one.
const REFERENCE: &str = "\0secret:";

/// The option value that refers to secret `name`.
pub fn make_reference(name: &str) -> String {
    format!("{REFERENCE}{name}")
}

/// The secret an option value refers to, if it is a reference.
pub fn reference(value: &str) -> Option<&str> {
    value.strip_prefix(REFERENCE)
}

/// `options` with every secret reference replaced by the secret's value.
pub fn resolve(
    options: &BTreeMap<String, String>,
    secret: impl Fn(&str) -> Option<String>,
) -> crate::error::Result<BTreeMap<String, String>> {
    options
        .iter()
        .map(|(k, v)| match reference(v) {
            None => Ok((k.clone(), v.clone())),
            Some(name) => secret(name).map(|value| (k.clone(), value)).ok_or_else(|| {
                crate::error::SluiceError::new(
                    crate::error::ErrorKind::UndefinedObject,
                    format!("option '{k}': secret \"{name}\" does not exist (CREATE SECRET {name} AS '...')"),
                )
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_and_masked() {
        for k in [
            "properties.sasl.password",
            "s3.secret_access_key",
            "S3.SECRET_ACCESS_KEY",
            "properties.sasl.oauthbearer.token",
            "properties.ssl.key.pem",
            "properties.ssl.key.password",
            "s3.session_token",
            "azure.storage_account_key",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in [
            "key",
            "key.format",
            "topic",
            "s3.access_key_id",
            "properties.bootstrap.servers",
            "path",
        ] {
            assert!(!is_secret(k), "{k}");
        }
        let o = BTreeMap::from([
            ("connector".to_string(), "kafka".to_string()),
            ("topic".to_string(), "t".to_string()),
            ("properties.sasl.password".to_string(), "hunter2".to_string()),
        ]);
        assert_eq!(options_text(&o), "properties.sasl.password=********, topic=t");
    }
}
