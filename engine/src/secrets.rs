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

/// A catalog statement (`CREATE STREAM s WITH ('k' = 'v', ...)`) with the
/// values of secret options (see [`is_secret`]) replaced by [`MASK`], for
/// showing a user the statement that made an object. An option is a quoted
/// or bare name, `=`, and a quoted value; anything else is left as it is.
pub fn masked_sql(sql: &str) -> String {
    // The statement as tokens of interest: quoted literals (with '' for a
    // quote inside), bare words and single characters.
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // The text of the last name token and whether a `=` followed it.
    let mut name: Option<String> = None;
    let mut after_eq = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            let start = i;
            i += 1;
            let mut text = String::new();
            while i < b.len() {
                if b[i] == b'\'' {
                    if i + 1 < b.len() && b[i + 1] == b'\'' {
                        text.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                let ch = sql[i..].chars().next().unwrap_or(' ');
                text.push(ch);
                i += ch.len_utf8();
            }
            if after_eq && name.as_deref().is_some_and(is_secret) {
                out.push('\'');
                out.push_str(MASK);
                out.push('\'');
                name = None;
            } else {
                out.push_str(&sql[start..i]);
                name = Some(text);
            }
            after_eq = false;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push_str(&sql[start..i]);
            name = Some(sql[start..i].to_string());
            after_eq = false;
        } else {
            let ch = sql[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
            if ch == '=' && name.is_some() {
                after_eq = true;
            } else if !ch.is_whitespace() {
                name = None;
                after_eq = false;
            }
        }
    }
    out
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

    #[test]
    fn statements_show_secret_values_masked() {
        let sql = "CREATE STREAM k WITH ('connector' = 'kafka', 'properties.sasl.password' = 'it''s hunter2', \
                   'topic' = 'password', s3.secret_access_key = 'abc', 'key' = 'id')";
        assert_eq!(
            masked_sql(sql),
            "CREATE STREAM k WITH ('connector' = 'kafka', 'properties.sasl.password' = '********', \
                   'topic' = 'password', s3.secret_access_key = '********', 'key' = 'id')"
        );
        let query = "CREATE SINK s AS SELECT 'password' = 'x' AS a, token FROM t WHERE name = 'é'";
        assert_eq!(
            masked_sql(query),
            "CREATE SINK s AS SELECT 'password' = '********' AS a, token FROM t WHERE name = 'é'"
        );
    }
}
