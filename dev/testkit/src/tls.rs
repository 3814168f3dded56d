//! Test certificates made in-process with `rcgen`: an authority, a server certificate it signed for
//! 127.0.0.1 and localhost, and a second authority that signed nothing of ours. PEM files in a
//! temporary folder that is removed on `Drop`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The files, by name in [`Certificates::dir`]:
/// `ca.pem`/`ca.key`, `server.pem`/`server.key` (signed by `ca`, for `127.0.0.1` and `localhost`)
/// and `other-ca.pem`/`other-ca.key` (an authority that signed nothing here).
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// Makes the authorities and the server certificate (P-256 keys).
    pub fn make() -> anyhow::Result<Certificates> {
        let dir = tempfile::tempdir().context("temporary folder for certificates")?;
        let certificates = Certificates { dir };
        let ca = certificates.authority("ca", "orders test CA")?;
        certificates.authority("other-ca", "another test CA")?;

        // rustls wants the address in subjectAltName and a leaf that is not a CA.
        let mut server = CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server.distinguished_name = name("eventstore");
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let certificate = server.signed_by(&key, &ca)?;
        certificates.write("server.pem", &certificate.pem())?;
        certificates.write("server.key", &key.serialize_pem())?;
        Ok(certificates)
    }

    /// A self-signed authority written as `<file>.pem` and `<file>.key`.
    fn authority(&self, file: &str, common_name: &str) -> anyhow::Result<Issuer<'static, KeyPair>> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        self.write(&format!("{file}.pem"), &certificate.pem())?;
        self.write(&format!("{file}.key"), &key.serialize_pem())?;
        Ok(Issuer::new(params, key))
    }

    fn write(&self, file: &str, pem: &str) -> anyhow::Result<()> {
        let path = self.path(file);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file `name` in the folder (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The authority that signed the server certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The server's certificate, for 127.0.0.1 and localhost.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The server certificate's private key (PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// An authority that signed nothing here: a client trusting only it refuses the server.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
