//! Channels to other processes: the one place a [`tonic::transport::Endpoint`] is built
//! ([`endpoint`]), and [`Pool`], channels reused per address. TLS settings go here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Error};

/// HTTP/2 keepalive pings on a channel, sent even while it is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// How often a ping is sent.
    pub interval: Duration,
    /// How long an answer may take before the connection is closed (`None`: tonic's
    /// default).
    pub timeout: Option<Duration>,
}

/// How a channel connects. Every channel has TCP_NODELAY on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    /// How long connecting may take (`None`: no bound but the OS's).
    pub connect_timeout: Option<Duration>,
    /// Keepalive pings, if any.
    pub keepalive: Option<Keepalive>,
}

/// The endpoint for `addr` (`HOST:PORT`, plaintext HTTP/2) with `options`.
///
/// # Errors
/// When `addr` does not make a valid URI.
pub fn endpoint(addr: &str, options: &ChannelOptions) -> Result<Endpoint, Error> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    if let Some(timeout) = options.connect_timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    if let Some(keepalive) = options.keepalive {
        endpoint = endpoint.http2_keep_alive_interval(keepalive.interval).keep_alive_while_idle(true);
        if let Some(timeout) = keepalive.timeout {
            endpoint = endpoint.keep_alive_timeout(timeout);
        }
    }
    Ok(endpoint)
}

/// One channel to `addr`, connected now and not pooled.
///
/// # Errors
/// When `addr` is not a valid address or the connection cannot be made.
pub async fn connect(addr: &str, options: &ChannelOptions) -> Result<Channel, Error> {
    endpoint(addr, options)?.connect().await
}

/// Channels reused per address, all with the same options. Cheap to clone (clones share
/// the channels).
#[derive(Debug, Clone, Default)]
pub struct Pool {
    options: ChannelOptions,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Pool {
    /// An empty pool whose channels connect with `options`.
    #[must_use]
    pub fn new(options: ChannelOptions) -> Self {
        Self { options, channels: Arc::default() }
    }

    fn cached(&self, addr: &str) -> Option<Channel> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).get(addr).cloned()
    }

    /// The channel to `addr`, connected eagerly when there is none yet: a failure here means
    /// nothing was sent, so trying elsewhere is safe.
    ///
    /// # Errors
    /// When `addr` is not a valid address or the connection cannot be made.
    pub async fn connect(&self, addr: &str) -> Result<Channel, Error> {
        if let Some(channel) = self.cached(addr) {
            return Ok(channel);
        }
        let channel = connect(addr, &self.options).await?;
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// The channel to `addr`, made without connecting when there is none yet (it connects on
    /// first use, and reconnects by itself after a failure).
    ///
    /// # Errors
    /// When `addr` is not a valid address.
    pub fn connect_lazy(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = endpoint(addr, &self.options)?.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops the channel to `addr` (after a transport failure), so the next call reconnects.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).remove(addr);
    }
}
