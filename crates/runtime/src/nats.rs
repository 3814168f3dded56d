//! Connecting to NATS.

use std::time::Duration;

use anyhow::Context as _;

/// Connects to the servers listed in `urls` (comma-separated, as in `NATS_URL`).
///
/// The first connection must succeed within `connect_timeout`; after that the client reconnects by
/// itself, forever, with backoff, and buffers publishes while disconnected.
pub async fn connect(
    urls: &str,
    name: &str,
    connect_timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    let servers = parse_urls(urls)?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        });
    // `retry_on_initial_connect` makes `connect` return at once; wait for the first connection so
    // that a wrong URL fails start-up with a clear message instead of retrying silently.
    let client = options
        .connect(servers.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {urls}"))?;
    let deadline = tokio::time::Instant::now() + connect_timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("cannot connect to NATS at {urls}: no server answered within {connect_timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// Splits and checks a comma-separated list of NATS URLs.
pub fn parse_urls(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("invalid NATS URL {url:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "no NATS URL given");
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_names_every_server() {
        let servers = parse_urls("nats://127.0.0.1:4222, nats://127.0.0.1:4223").expect("valid");
        assert_eq!(servers.len(), 2);
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(parse_urls(" , ").is_err());
    }
}
