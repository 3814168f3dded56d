//! The dev stack's identity provider: at the first start, an ES256 signing key
//! (`$STACK_DIR/token-key.pem`, mode 600) and the JWKS that publishes it
//! (`$STACK_DIR/jwks.json`), which ordersvc checks tokens against (`ORDERSVC_JWKS`). `devstack
//! env` prints an operator's token (`ORDERCTL_TOKEN`) and a customer's (`ORDERS_TOKEN`, customer
//! `c1`); `devstack token` prints others.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use testkit::tokens::{OPERATOR_SCOPE, TokenIssuer};

/// The issuer and audience of the stack's tokens (`ORDERSVC_ISSUER`, `ORDERSVC_AUDIENCE`).
pub const ISSUER: &str = "https://id.devstack.local";
pub const AUDIENCE: &str = "orders-api";
/// The customer of `ORDERS_TOKEN`: the reference body's.
pub const SAMPLE_CUSTOMER: &str = "c1";
/// How long the tokens of `devstack env` live: a working day.
pub const ENV_TTL: Duration = Duration::from_secs(12 * 3600);

pub fn key_file(dir: &Path) -> PathBuf {
    dir.join("token-key.pem")
}

pub fn jwks_file(dir: &Path) -> PathBuf {
    dir.join("jwks.json")
}

/// The stack's signing key, made (mode 600) when `dir` has none yet; the JWKS is written from it.
pub fn ensure(dir: &Path) -> anyhow::Result<TokenIssuer> {
    let file = key_file(dir);
    let issuer = if file.is_file() {
        load(dir)?
    } else {
        let issuer = TokenIssuer::generate(ISSUER, AUDIENCE)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("creating {}", file.display()))?;
        out.write_all(issuer.key_pem().as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        issuer
    };
    // Whatever the umask made of an older file.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    issuer.write_jwks(&jwks_file(dir))?;
    Ok(issuer)
}

/// The signing key of the stack in `dir`; an error that says to start the stack when it has none.
pub fn load(dir: &Path) -> anyhow::Result<TokenIssuer> {
    let file = key_file(dir);
    let pem = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no token signing key {}: start the stack first (scripts/stack start)",
            file.display()
        )
    })?;
    TokenIssuer::from_pem(&pem, ISSUER, AUDIENCE).with_context(|| format!("{}", file.display()))
}

/// ordersvc's variables that make it check the stack's tokens (the key made if missing).
pub fn ordersvc_env(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    ensure(dir)?;
    Ok(vec![
        (
            "ORDERSVC_JWKS".to_owned(),
            jwks_file(dir).to_string_lossy().into_owned(),
        ),
        ("ORDERSVC_ISSUER".to_owned(), ISSUER.to_owned()),
        ("ORDERSVC_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
    ])
}

/// An operator's token (scope `orders:admin`), living `ttl`.
pub fn operator(issuer: &TokenIssuer, ttl: Duration) -> String {
    issuer.token("operator", Some(OPERATOR_SCOPE), ttl)
}

/// `export ORDERCTL_TOKEN=…` (operator) and `export ORDERS_TOKEN=…` (customer c1); none when the
/// stack has no key yet.
pub fn env_lines(dir: &Path) -> Vec<String> {
    let Ok(issuer) = load(dir) else {
        return Vec::new();
    };
    vec![
        format!("export ORDERCTL_TOKEN={}", operator(&issuer, ENV_TTL)),
        format!(
            "export ORDERS_TOKEN={}",
            issuer.token(SAMPLE_CUSTOMER, None, ENV_TTL)
        ),
    ]
}

/// `1h`, `30m`, `90s` or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1h, 30m or 90s"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(format!("{text:?} is not a duration like 1h, 30m or 90s")),
    };
    if seconds == 0 {
        return Err("a token must live at least one second".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_mode_600_and_its_jwks_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path()).expect("made");
        let mode = std::fs::metadata(key_file(dir.path()))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ensure(dir.path()).expect("kept");
        assert_eq!(first.kid(), again.kid(), "the same key on the next start");
        let jwks = std::fs::read_to_string(jwks_file(dir.path())).expect("jwks");
        assert!(jwks.contains(first.kid()), "{jwks}");
        assert!(
            !jwks.contains("\"d\""),
            "no private part in the JWKS: {jwks}"
        );
        let lines = env_lines(dir.path());
        assert!(lines[0].starts_with("export ORDERCTL_TOKEN="));
        assert!(lines[1].starts_with("export ORDERS_TOKEN="));
    }

    #[test]
    fn ttls_read_hours_minutes_and_seconds() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
    }
}
