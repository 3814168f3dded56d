//! PEM files named by a configuration variable (TLS certificates, keys and authorities), read and
//! checked at start-up so that a wrong path or a wrong file stops the process with the variable named.

use std::path::Path;

use anyhow::Context as _;

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    /// At least one `CERTIFICATE` block (a certificate chain, or the authorities to trust).
    Certificate,
    /// A private key block (`PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
    PrivateKey,
}

impl Pem {
    fn marker(self) -> &'static [u8] {
        match self {
            Pem::Certificate => b"-----BEGIN CERTIFICATE-----",
            Pem::PrivateKey => b"PRIVATE KEY-----",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pem::Certificate => "PEM certificate",
            Pem::PrivateKey => "PEM private key",
        }
    }
}

/// Reads the file at `path`, which `variable` names, and checks that it holds `kind`; the error
/// names the variable and the path.
pub fn read(variable: &str, path: &Path, kind: Pem) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("{variable}: cannot read {}", path.display()))?;
    let marker = kind.marker();
    anyhow::ensure!(
        pem.windows(marker.len()).any(|window| window == marker),
        "{variable}: {} holds no {}",
        path.display(),
        kind.name()
    );
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_the_block_or_no_file_names_the_variable() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("writing");
        assert!(read("X_CA", &path, Pem::Certificate).is_ok());
        let err = read("X_KEY", &path, Pem::PrivateKey).expect_err("not a key");
        assert_eq!(
            err.to_string(),
            format!("X_KEY: {} holds no PEM private key", path.display())
        );
        let missing = dir.path().join("missing.pem");
        let err = read("X_CA", &missing, Pem::Certificate).expect_err("no file");
        assert!(err.to_string().starts_with("X_CA: cannot read"), "{err}");
    }
}
