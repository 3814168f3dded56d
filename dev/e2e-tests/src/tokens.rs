//! The identity provider of one [`crate::pipeline::Pipeline`]: a signing key, its JWKS in a file
//! that ordersvc reads (`ORDERSVC_JWKS`), and tokens for operators and customers.

use std::path::PathBuf;

use anyhow::Context as _;
use testkit::tokens::TokenIssuer;

/// The issuer and audience ordersvc accepts in the end-to-end tests.
pub const ISSUER: &str = "https://id.pipeline.test";
pub const AUDIENCE: &str = "orders-api";

pub struct Tokens {
    pub issuer: TokenIssuer,
    jwks: PathBuf,
    operator: String,
    _dir: tempfile::TempDir,
}

impl Tokens {
    /// A new key and its JWKS file.
    pub fn make() -> anyhow::Result<Tokens> {
        let issuer = TokenIssuer::generate(ISSUER, AUDIENCE)?;
        let dir = tempfile::tempdir().context("a folder for the JWKS")?;
        let jwks = dir.path().join("jwks.json");
        issuer.write_jwks(&jwks)?;
        let operator = issuer.operator();
        Ok(Tokens {
            issuer,
            jwks,
            operator,
            _dir: dir,
        })
    }

    /// ordersvc's variables that make it accept these tokens.
    pub fn ordersvc_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ORDERSVC_JWKS".to_owned(),
                self.jwks.to_string_lossy().into_owned(),
            ),
            ("ORDERSVC_ISSUER".to_owned(), ISSUER.to_owned()),
            ("ORDERSVC_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
        ]
    }

    /// An operator's token (scope `orders:admin`): every order, any customer.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// A token of `customer_id`: that customer's orders only.
    pub fn customer(&self, customer_id: &str) -> String {
        self.issuer.customer(customer_id)
    }
}
