//! The event store's error policy: one enum, one mapping to `tonic::Status`.

use uuid::Uuid;

/// Why an append or a read did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is malformed; sending it again will not help.
    #[error("{0}")]
    InvalidArgument(String),

    /// Optimistic concurrency: another event was appended first.
    #[error(
        "aggregate {aggregate_id} is at version {actual}, not at the expected version {expected}"
    )]
    VersionConflict {
        aggregate_id: String,
        expected: i64,
        actual: i64,
    },

    /// Idempotency: this event id is taken by an event with other content.
    #[error("event {0} already exists with different content")]
    AlreadyExists(Uuid),

    /// The database cannot be reached (or kept aborting the transaction); retry with the same event id.
    #[error("event store database unavailable: {0}")]
    Unavailable(String),

    /// The append queue is full: the store takes no more work until it catches up; retry later.
    #[error("event store overloaded: its queue of {0} events is full; retry later")]
    Overloaded(usize),

    /// The service is stopping and took no new work.
    #[error("event store is shutting down")]
    ShuttingDown,

    /// A bug or an unexpected database answer. Logged where it happens; clients see an opaque message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The same error for another append of a failed batch (sqlx errors cannot be cloned, so the
    /// variants keep only text).
    pub fn duplicate(&self) -> Self {
        match self {
            StoreError::InvalidArgument(m) => StoreError::InvalidArgument(m.clone()),
            StoreError::VersionConflict {
                aggregate_id,
                expected,
                actual,
            } => StoreError::VersionConflict {
                aggregate_id: aggregate_id.clone(),
                expected: *expected,
                actual: *actual,
            },
            StoreError::AlreadyExists(id) => StoreError::AlreadyExists(*id),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Overloaded(n) => StoreError::Overloaded(*n),
            StoreError::ShuttingDown => StoreError::ShuttingDown,
            StoreError::Internal(m) => StoreError::Internal(m.clone()),
        }
    }

    /// Classifies a database error; logs it once when it is unexpected.
    pub fn from_sql(err: sqlx::Error) -> Self {
        if pipeline_runtime::db::is_unavailable(&err) {
            StoreError::Unavailable(err.to_string())
        } else {
            tracing::error!(error = %err, "unexpected database error");
            StoreError::Internal(err.to_string())
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::InvalidArgument(_) => tonic::Status::invalid_argument(err.to_string()),
            StoreError::VersionConflict { .. } => {
                tonic::Status::failed_precondition(err.to_string())
            }
            StoreError::AlreadyExists(_) => tonic::Status::already_exists(err.to_string()),
            StoreError::Unavailable(_) | StoreError::ShuttingDown => {
                tonic::Status::unavailable(err.to_string())
            }
            StoreError::Overloaded(_) => tonic::Status::resource_exhausted(err.to_string()),
            StoreError::Internal(_) => tonic::Status::internal("internal error in the event store"),
        }
    }
}
