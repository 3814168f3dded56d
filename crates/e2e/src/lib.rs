//! End-to-end tests of the order pipeline live in `tests/it`: they start the workspace's binaries
//! (`eventstore`, `ordersvc`, the three workers, `bootstrapper`) as real processes against a real
//! nats-server and PostgreSQL from the test kit. This library is empty on purpose.
