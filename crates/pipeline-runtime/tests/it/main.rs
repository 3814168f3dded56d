//! The runtime against real servers: the consumer loop when NATS goes away, alone or as a cluster node.

mod consumer;
mod db;
