//! The client of ordersvc's HTTP API lives in `orders-load`, which the chaos run shares; the
//! commands keep naming it `crate::api`.

pub use orders_load::api::{API_TIMEOUT, ApiClient, ApiError};
