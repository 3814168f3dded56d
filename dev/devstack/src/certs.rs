//! Service identities for the event store (mTLS): an authority, the event store's server
//! certificate and one client certificate per service and for `orderctl`, made with `rcgen`
//! ([`testkit::tls`]), and the variables that give each process its own. The dev stack keeps them
//! in `$STACK_DIR/tls` (`STACK_MTLS=0` turns them off); the end-to-end tests' `Pipeline` makes
//! them in its temporary folder.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use testkit::tls::{Certificates, Signer};

/// The clients of the event store, each with a certificate whose first DNS name is this identity
/// (the event store's table in `eventstore::authz` says what each may do).
pub const IDENTITIES: [&str; 6] = [
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
    "orderctl",
];

/// The identity of processes that are not a service (the operator's shell, `orderctl`).
pub const OPERATOR: &str = "orderctl";

/// The certificate files of one stack or test pipeline.
#[derive(Debug, Clone)]
pub struct ServiceCerts {
    dir: PathBuf,
}

impl ServiceCerts {
    /// Makes the authority, the server certificate and every client certificate in `dir`,
    /// replacing files of the same names.
    pub fn make(dir: &Path) -> anyhow::Result<ServiceCerts> {
        let certificates = Certificates::make_in(dir)
            .with_context(|| format!("making certificates in {}", dir.display()))?;
        for identity in IDENTITIES {
            certificates
                .make_client(identity, Signer::Ca)
                .with_context(|| format!("making the client certificate of {identity}"))?;
        }
        // Written last: its presence says the set is whole.
        std::fs::write(dir.join(COMPLETE), "")
            .with_context(|| format!("writing {}", dir.join(COMPLETE).display()))?;
        Ok(ServiceCerts {
            dir: dir.to_owned(),
        })
    }

    /// The certificates in `dir` if a whole set is there, else made anew: services that run on
    /// keep the files they were started with.
    pub fn ensure(dir: &Path) -> anyhow::Result<ServiceCerts> {
        match ServiceCerts::existing(dir) {
            Some(certs) => Ok(certs),
            None => ServiceCerts::make(dir),
        }
    }

    /// The certificates in `dir`, if a whole set is there.
    pub fn existing(dir: &Path) -> Option<ServiceCerts> {
        dir.join(COMPLETE).is_file().then(|| ServiceCerts {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The TLS variables of `process` (`None`: the operator's shell and the bootstrapper, who get
    /// `orderctl`'s certificate): the event store serves TLS and requires client certificates;
    /// each client reaches it over `https://` with its own certificate.
    pub fn env(&self, process: Option<&str>, eventstore_port: u16) -> Vec<(String, String)> {
        let vars: Vec<(&str, String)> = match process {
            Some("eventstore") => vec![
                ("EVENTSTORE_TLS_CERT", self.file("server.pem")),
                ("EVENTSTORE_TLS_KEY", self.file("server.key")),
                ("EVENTSTORE_TLS_CLIENT_CA", self.file("ca.pem")),
            ],
            client => {
                let identity = client.unwrap_or(OPERATOR);
                vec![
                    (
                        "EVENTSTORE_URL",
                        format!("https://127.0.0.1:{eventstore_port}"),
                    ),
                    ("EVENTSTORE_TLS_CA", self.file("ca.pem")),
                    (
                        "EVENTSTORE_TLS_CLIENT_CERT",
                        self.file(&format!("client-{identity}.pem")),
                    ),
                    (
                        "EVENTSTORE_TLS_CLIENT_KEY",
                        self.file(&format!("client-{identity}.key")),
                    ),
                ]
            }
        };
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Marks a whole set of certificates in the folder.
const COMPLETE: &str = "complete";

/// `env` with each of `vars` replacing a variable of the same name, or added.
pub fn override_env(env: &mut Vec<(String, String)>, vars: Vec<(String, String)>) {
    for (name, value) in vars {
        match env.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => env.push((name, value)),
        }
    }
}

/// The dev stack's certificates: `$STACK_DIR/tls`.
pub fn stack_dir(layout: &crate::settings::Layout) -> PathBuf {
    layout.dir.join("tls")
}

/// At the dev stack's start: its certificates (kept from an earlier start, else made) when
/// `STACK_MTLS` wants mTLS; otherwise none, and the folder is removed so that `env` and `status`
/// follow this start.
pub fn prepare_stack(layout: &crate::settings::Layout) -> anyhow::Result<Option<ServiceCerts>> {
    let dir = stack_dir(layout);
    if stack_wants_mtls() {
        return ServiceCerts::ensure(&dir).map(Some);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(None)
}

/// Whether the dev stack runs the event store with mTLS: `STACK_MTLS` unless `0` (on by default).
pub fn stack_wants_mtls() -> bool {
    std::env::var("STACK_MTLS").map_or(true, |value| value != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_gets_its_own_certificate_and_the_store_the_authority() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let certs = ServiceCerts::make(dir.path()).expect("certificates");
        let get = |env: &[(String, String)], name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let store = certs.env(Some("eventstore"), 50051);
        assert!(get(&store, "EVENTSTORE_TLS_CLIENT_CA").ends_with("ca.pem"));
        for identity in IDENTITIES {
            let env = certs.env(Some(identity), 50051);
            assert_eq!(get(&env, "EVENTSTORE_URL"), "https://127.0.0.1:50051");
            let cert = get(&env, "EVENTSTORE_TLS_CLIENT_CERT");
            assert!(cert.ends_with(&format!("client-{identity}.pem")), "{cert}");
            assert!(Path::new(&cert).is_file(), "{cert}");
        }
        assert!(
            get(&certs.env(None, 1), "EVENTSTORE_TLS_CLIENT_KEY").ends_with("client-orderctl.key")
        );
        let again = ServiceCerts::ensure(dir.path()).expect("kept");
        assert_eq!(again.dir(), certs.dir());
    }

    #[test]
    fn an_override_replaces_a_variable_of_the_same_name() {
        let mut env = vec![("EVENTSTORE_URL".to_owned(), "http://x".to_owned())];
        override_env(
            &mut env,
            vec![("EVENTSTORE_URL".to_owned(), "https://x".to_owned())],
        );
        assert_eq!(
            env,
            vec![("EVENTSTORE_URL".to_owned(), "https://x".to_owned())]
        );
    }
}
