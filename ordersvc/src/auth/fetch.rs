//! The key set of an `http://` or `https://` URL. Both go through one hyper client over rustls with
//! ring, chosen for this client alone (no process-wide provider), trusting the system's authorities
//! and those of `ORDERSVC_JWKS_CA`. A fetch is bounded in time ([`TIMEOUT`]) and size
//! ([`MAX_JWKS_BYTES`]); redirects are not followed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{Request, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pipeline_runtime::pem::{self, Pem};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;

/// The variable naming extra authorities (PEM) for an `https://` `ORDERSVC_JWKS`.
pub const CA_VARIABLE: &str = "ORDERSVC_JWKS_CA";
/// A key set is a few kilobytes: a larger answer is refused rather than read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take, from connecting to the last byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches the key set of one URL.
pub(super) struct Fetcher {
    uri: Uri,
    /// The URL as errors show it: scheme, host, port and path only, since user information or a
    /// query may hold a secret.
    shown: String,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    /// A fetcher of `url` (`http://` or `https://`), trusting for `https://` the system's
    /// authorities and those in the PEM file `ca`. Errors name the variable at fault.
    pub(super) fn new(url: &str, ca: Option<&Path>) -> anyhow::Result<Fetcher> {
        let uri: Uri = url.parse().map_err(|_| {
            anyhow::anyhow!("ORDERSVC_JWKS is neither a file nor a valid http(s):// URL")
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("ORDERSVC_JWKS: a URL must be http:// or https://"),
        };
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| anyhow::anyhow!("ORDERSVC_JWKS: the URL names no host"))?;
        let port = uri
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        let shown = format!(
            "{}://{host}{port}{}",
            uri.scheme_str().unwrap_or_default(),
            uri.path()
        );

        let mut roots = rustls::RootCertStore::empty();
        match (https, ca) {
            (false, Some(_)) => anyhow::bail!(
                "{CA_VARIABLE} is set but ORDERSVC_JWKS ({shown}) is not https://: use https:// \
                 or unset {CA_VARIABLE}"
            ),
            (false, None) => {}
            (true, ca) => {
                let system = rustls_native_certs::load_native_certs();
                if !system.errors.is_empty() {
                    let errors: Vec<String> = system.errors.iter().map(|e| e.to_string()).collect();
                    tracing::warn!(
                        errors = errors.join("; "),
                        "some of the system's certificate authorities cannot be read"
                    );
                }
                roots.add_parsable_certificates(system.certs);
                if let Some(ca) = ca {
                    add_authorities(&mut roots, ca)?;
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "ORDERSVC_JWKS ({shown}) is https:// but no certificate authority is known: \
                     the system has none; name the one that signed the server's certificate in \
                     {CA_VARIABLE}"
                );
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS for ORDERSVC_JWKS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Fetcher {
            uri,
            shown,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The key set as JSON; the error names the URL (as [`Fetcher::shown`]).
    pub(super) async fn fetch(&self) -> anyhow::Result<Value> {
        tokio::time::timeout(TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "fetching {}: no complete answer within {} s",
                    self.shown,
                    TIMEOUT.as_secs()
                )
            })?
    }

    async fn fetch_unbounded(&self) -> anyhow::Result<Value> {
        let shown = &self.shown;
        let request = Request::get(self.uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .with_context(|| format!("a request for {shown}"))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("fetching {shown}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{shown} answered {}",
            response.status()
        );
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<LengthLimitError>() {
                    anyhow::anyhow!("{shown} answered more than {MAX_JWKS_BYTES} bytes: no key set")
                } else {
                    anyhow::anyhow!("reading the answer of {shown}: {error}")
                }
            })?
            .to_bytes();
        serde_json::from_slice(&body).with_context(|| format!("{shown} is not a JWKS (JSON)"))
    }
}

/// Adds the certificates of the PEM file `ca` (`ORDERSVC_JWKS_CA`) to `roots`.
fn add_authorities(roots: &mut rustls::RootCertStore, ca: &Path) -> anyhow::Result<()> {
    let pem = pem::read(CA_VARIABLE, ca, Pem::Certificate)?;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate
            .with_context(|| format!("{CA_VARIABLE}: {} is not valid PEM", ca.display()))?;
        roots.add(certificate).with_context(|| {
            format!(
                "{CA_VARIABLE}: {} holds a certificate that cannot be read",
                ca.display()
            )
        })?;
    }
    Ok(())
}

/// The value of `ORDERSVC_JWKS_CA` at parse time: a readable PEM file with a certificate.
pub fn ca_file(value: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(value);
    if !value.is_empty() {
        pem::read(CA_VARIABLE, &path, Pem::Certificate).map_err(|err| format!("{err:#}"))?;
    }
    Ok(path)
}
