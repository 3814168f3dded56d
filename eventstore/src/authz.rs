//! Who may append what, and who may read: the one table of service identities.
//!
//! With `EVENTSTORE_TLS_CLIENT_CA` set, every client presents a certificate signed by that
//! authority (the handshake refuses anyone else), and its identity is the certificate's first DNS
//! subjectAltName. Each identity may append only its own event types and use only the reads it
//! needs:
//!
//! | identity | may append | may read |
//! |---|---|---|
//! | `ordersvc` | `created`, `cancelled` | `GetEvents` (history, cancel, readiness) |
//! | `paymentworker` | `paymentdebited`, `paymentfailed`, `paymentrefunded` | `GetEvents` (decides on the aggregate) |
//! | `reviewworker` | `approved`, `rejected` | `GetEvents` (decides on the aggregate) |
//! | `deadlinewatcher` | `cancelled` | `GetEvents` (decides on the aggregate) |
//! | `querymodelworker` | nothing | `GetEvents` (fills gaps), `GetEventsStream` (rebuilds the read model) |
//! | `orderctl` | nothing | `GetEvents`, `GetEventsStream` (operators read everything) |
//!
//! Any other identity, or a certificate without a DNS name, may do nothing. A refused append is
//! `PERMISSION_DENIED` naming the identity and the event type, and is checked before anything is
//! queued: a `CreateEvents` call with one refused event writes none of its events. Without
//! `EVENTSTORE_TLS_CLIENT_CA` there are no identities and every client may do everything (the
//! event store says so at start).

use std::sync::Arc;

use tonic::Status;
use tonic::transport::CertificateDer;

/// A read a service may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `GetEvents`: one event, or one aggregate's history.
    GetEvents,
    /// `GetEventsStream`: one aggregate or every event, optionally following new ones.
    GetEventsStream,
}

impl Read {
    fn method(self) -> &'static str {
        match self {
            Read::GetEvents => "GetEvents",
            Read::GetEventsStream => "GetEventsStream",
        }
    }
}

/// What one service identity may do.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub identity: &'static str,
    pub appends: &'static [&'static str],
    pub reads: &'static [Read],
}

/// The table (documented above, in the README's "Service identities" and in DESIGN.md).
pub const GRANTS: &[Grant] = &[
    Grant {
        identity: "ordersvc",
        appends: &["created", "cancelled"],
        reads: &[Read::GetEvents],
    },
    Grant {
        identity: "paymentworker",
        appends: &["paymentdebited", "paymentfailed", "paymentrefunded"],
        reads: &[Read::GetEvents],
    },
    Grant {
        identity: "reviewworker",
        appends: &["approved", "rejected"],
        reads: &[Read::GetEvents],
    },
    Grant {
        identity: "deadlinewatcher",
        appends: &["cancelled"],
        reads: &[Read::GetEvents],
    },
    Grant {
        identity: "querymodelworker",
        appends: &[],
        reads: &[Read::GetEvents, Read::GetEventsStream],
    },
    Grant {
        identity: "orderctl",
        appends: &[],
        reads: &[Read::GetEvents, Read::GetEventsStream],
    },
];

/// Who is calling, as far as authorization goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// mTLS is off (no `EVENTSTORE_TLS_CLIENT_CA`): nothing is checked.
    Unchecked,
    /// The identity in the client certificate; `None` when it is not in the table.
    Service {
        identity: String,
        grant: Option<&'static Grant>,
    },
}

impl Caller {
    /// The caller of a request, from its client certificate when mTLS is on (`mtls`). A request
    /// without a certificate (only possible when the handshake did not ask for one) or whose
    /// certificate has no DNS name is `UNAUTHENTICATED`.
    pub fn of<T>(request: &tonic::Request<T>, mtls: bool) -> Result<Caller, Status> {
        if !mtls {
            return Ok(Caller::Unchecked);
        }
        let certificates: Option<Arc<Vec<CertificateDer<'static>>>> = request.peer_certs();
        let leaf = certificates
            .as_deref()
            .and_then(|chain| chain.first())
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let identity = identity(leaf).ok_or_else(|| {
            Status::unauthenticated("the client certificate names no DNS subjectAltName")
        })?;
        Ok(Caller::service(identity))
    }

    /// The caller with `identity`, granted what the table says.
    pub fn service(identity: impl Into<String>) -> Caller {
        let identity = identity.into();
        let grant = GRANTS.iter().find(|grant| grant.identity == identity);
        Caller::Service { identity, grant }
    }

    /// The identity, for spans and logs (`None` without mTLS).
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Unchecked => None,
            Caller::Service { identity, .. } => Some(identity),
        }
    }

    /// Whether the caller may append events of `event_type`; the refusal names both.
    pub fn may_append(&self, event_type: &str) -> Result<(), Status> {
        match self {
            Caller::Unchecked => Ok(()),
            Caller::Service { grant, .. }
                if grant.is_some_and(|grant| grant.appends.contains(&event_type)) =>
            {
                Ok(())
            }
            Caller::Service { identity, .. } => Err(Status::permission_denied(format!(
                "{identity} may not append {event_type:?} events"
            ))),
        }
    }

    /// Whether the caller may use `read`.
    pub fn may_read(&self, read: Read) -> Result<(), Status> {
        match self {
            Caller::Unchecked => Ok(()),
            Caller::Service { grant, .. }
                if grant.is_some_and(|grant| grant.reads.contains(&read)) =>
            {
                Ok(())
            }
            Caller::Service { identity, .. } => Err(Status::permission_denied(format!(
                "{identity} may not call {}",
                read.method()
            ))),
        }
    }
}

/// The identity a certificate carries: its first DNS subjectAltName. `None` for a certificate that
/// cannot be parsed or has no DNS name (the handshake already checked its signature).
fn identity(certificate: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    parsed.valid_dns_names().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_is_in_the_table_once() {
        for grant in GRANTS {
            assert_eq!(
                GRANTS
                    .iter()
                    .filter(|g| g.identity == grant.identity)
                    .count(),
                1,
                "{}",
                grant.identity
            );
        }
    }

    #[test]
    fn a_refusal_names_the_identity_and_the_event_type() {
        let status = Caller::service("reviewworker")
            .may_append("paymentdebited")
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("reviewworker"), "{status:?}");
        assert!(status.message().contains("paymentdebited"), "{status:?}");
    }

    #[test]
    fn an_identity_outside_the_table_may_do_nothing() {
        let stranger = Caller::service("mallory");
        assert!(stranger.may_append("created").is_err());
        assert!(stranger.may_read(Read::GetEvents).is_err());
        assert!(Caller::Unchecked.may_append("anything").is_ok());
    }

    #[test]
    fn readers_read_and_append_nothing() {
        for reader in ["querymodelworker", "orderctl"] {
            let caller = Caller::service(reader);
            assert!(caller.may_read(Read::GetEventsStream).is_ok());
            assert!(caller.may_append("created").is_err());
        }
        assert!(
            Caller::service("paymentworker")
                .may_read(Read::GetEventsStream)
                .is_err()
        );
    }
}
