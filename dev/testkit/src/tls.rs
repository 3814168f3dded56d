//! Test certificates made in-process with `rcgen`: an authority, a server certificate it signed for
//! 127.0.0.1 and localhost, client certificates it signed for service identities (mTLS), and a
//! second authority that signed nothing of ours but, on request, client certificates an event
//! store must refuse. PEM files in a temporary folder that is removed on `Drop`, or in a folder
//! that is kept (the dev stack's).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The files, by name in [`Certificates::dir`]:
/// `ca.pem`/`ca.key`, `server.pem`/`server.key` (signed by `ca`, for `127.0.0.1` and `localhost`),
/// `other-ca.pem`/`other-ca.key` (an authority that signed nothing here), and for each client
/// identity made ([`Certificates::make_client`]) `client-<identity>.pem`/`.key` (signed by `ca`)
/// or `other-client-<identity>.pem`/`.key` (signed by `other-ca`).
pub struct Certificates {
    dir: Folder,
    ca: Issuer<'static, KeyPair>,
    other_ca: Issuer<'static, KeyPair>,
}

/// Where the files are: removed on `Drop`, or kept.
enum Folder {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

/// Which authority signs a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// `ca`, the authority the event store trusts for clients.
    Ca,
    /// `other-ca`, an authority it does not trust.
    OtherCa,
}

impl Certificates {
    /// Makes the authorities and the server certificate (P-256 keys) in a temporary folder.
    pub fn make() -> anyhow::Result<Certificates> {
        let dir = tempfile::tempdir().context("temporary folder for certificates")?;
        Certificates::make_into(Folder::Temporary(dir))
    }

    /// Makes the authorities and the server certificate in `dir`, which is created if missing and
    /// kept (files of the same names are replaced).
    pub fn make_in(dir: &Path) -> anyhow::Result<Certificates> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Certificates::make_into(Folder::Kept(dir.to_owned()))
    }

    fn make_into(dir: Folder) -> anyhow::Result<Certificates> {
        let ca = authority(&dir, "ca", "orders test CA")?;
        let other_ca = authority(&dir, "other-ca", "another test CA")?;
        let certificates = Certificates { dir, ca, other_ca };
        let ca = &certificates.ca;

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
        let certificate = server.signed_by(&key, ca)?;
        certificates.write("server.pem", &certificate.pem())?;
        certificates.write("server.key", &key.serialize_pem())?;
        Ok(certificates)
    }

    /// A client certificate for `identity` (its only DNS subjectAltName, and its common name),
    /// signed by `signer`; returns the paths of the certificate and its key.
    pub fn make_client(
        &self,
        identity: &str,
        signer: Signer,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (issuer, file) = match signer {
            Signer::Ca => (&self.ca, format!("client-{identity}")),
            Signer::OtherCa => (&self.other_ca, format!("other-client-{identity}")),
        };
        let mut client = CertificateParams::new([identity.to_owned()])?;
        client.distinguished_name = name(identity);
        client.is_ca = IsCa::ExplicitNoCa;
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let certificate = client.signed_by(&key, issuer)?;
        let (cert_file, key_file) = (format!("{file}.pem"), format!("{file}.key"));
        write(&self.dir, &cert_file, &certificate.pem())?;
        write(&self.dir, &key_file, &key.serialize_pem())?;
        Ok((self.path(&cert_file), self.path(&key_file)))
    }

    fn write(&self, file: &str, pem: &str) -> anyhow::Result<()> {
        write(&self.dir, file, pem)
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file `name` in the folder (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client certificate of `identity` signed by `ca` ([`Certificates::make_client`]).
    pub fn client_cert(&self, identity: &str) -> PathBuf {
        self.path(&format!("client-{identity}.pem"))
    }

    /// The key of [`Certificates::client_cert`].
    pub fn client_key(&self, identity: &str) -> PathBuf {
        self.path(&format!("client-{identity}.key"))
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

impl Folder {
    fn path(&self) -> &Path {
        match self {
            Folder::Temporary(dir) => dir.path(),
            Folder::Kept(dir) => dir,
        }
    }
}

/// A self-signed authority written as `<file>.pem` and `<file>.key` in `dir`.
fn authority(
    dir: &Folder,
    file: &str,
    common_name: &str,
) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    write(dir, &format!("{file}.pem"), &certificate.pem())?;
    write(dir, &format!("{file}.key"), &key.serialize_pem())?;
    Ok(Issuer::new(params, key))
}

/// Writes `pem` to `file` in `dir`; a key file is readable by its owner only.
fn write(dir: &Folder, file: &str, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.path().join(file);
    let mode = if file.ends_with(".key") { 0o600 } else { 0o644 };
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut out| out.write_all(pem.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
