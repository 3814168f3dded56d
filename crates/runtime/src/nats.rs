//! Connecting to NATS.

use std::time::Duration;

use anyhow::Context as _;

/// Connects to the servers listed in `urls` (comma-separated, as in `NATS_URL`) and waits until the
/// first connection is up, at most `connect_timeout`, so that a wrong URL fails start-up clearly.
///
/// After that the client reconnects by itself, forever, with backoff.
pub async fn connect(
    urls: &str,
    name: &str,
    connect_timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    let client = connect_in_background(urls, name).await?;
    wait_connected(&client, connect_timeout)
        .await
        .with_context(|| format!("cannot connect to NATS at {urls}"))?;
    Ok(client)
}

/// Returns a client at once and connects in the background, retrying forever. For services that must
/// keep working while NATS is down (the event store appends and publishes later).
pub async fn connect_in_background(urls: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = parse_urls(urls)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        })
        .connect(servers.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {urls}"))
}

/// Waits until `client` is connected, at most `timeout`.
pub async fn wait_connected(client: &async_nats::Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no server answered within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
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
