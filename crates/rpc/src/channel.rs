//! Channels to other processes: the one place a [`tonic::transport::Endpoint`] is built
//! ([`endpoint`]), and [`Pool`], channels reused per address, in plaintext or over TLS
//! ([`ClientTls`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{ClientTls, TlsError, host_of};

/// A channel that could not be made: a bad address or TLS files, or a failed connection.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// tonic refused the address or could not connect.
    #[error("{}", crate::status::error_chain(.0))]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

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

/// How a channel is secured: plaintext, or TLS verifying the server's certificate for a
/// name.
#[derive(Debug, Clone, Copy)]
pub enum Security<'a> {
    /// Plaintext HTTP/2.
    Plaintext,
    /// TLS with `tls`'s files, verifying the server's certificate for `name` (a node id, a
    /// host name or an IP address).
    Tls {
        /// The client's TLS files.
        tls: &'a ClientTls,
        /// The name the server's certificate must be valid for.
        name: &'a str,
    },
}

/// The endpoint for `addr` (`HOST:PORT`) with `options`, secured as `security` says.
///
/// # Errors
/// When `addr` does not make a valid URI, or the TLS files cannot be used.
pub fn endpoint(addr: &str, options: &ChannelOptions, security: Security<'_>) -> Result<Endpoint, ChannelError> {
    let mut endpoint = match security {
        Security::Plaintext => Endpoint::from_shared(format!("http://{addr}"))?,
        Security::Tls { tls, name } => {
            Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.config(name)?)?
        }
    }
    .tcp_nodelay(true);
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
/// When `addr` is not a valid address, the TLS files cannot be used or the connection
/// cannot be made.
pub async fn connect(addr: &str, options: &ChannelOptions, security: Security<'_>) -> Result<Channel, ChannelError> {
    Ok(endpoint(addr, options, security)?.connect().await?)
}

/// Channels reused per address (and, over TLS, per name the server is verified for), all
/// with the same options and TLS files. Cheap to clone (clones share the channels). When
/// the TLS files change, every channel is dropped, so the next calls connect with the new
/// ones.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    options: ChannelOptions,
    tls: Option<Arc<ClientTls>>,
    channels: Arc<Mutex<Channels>>,
}

/// A pool's channels, keyed by (address, name verified), and the generation of the TLS
/// files they were built with ([`ClientTls::generation`]).
#[derive(Debug, Default)]
struct Channels {
    generation: u64,
    map: HashMap<(String, String), Channel>,
}

impl Pool {
    /// An empty plaintext pool whose channels connect with `options`.
    #[must_use]
    pub fn new(options: ChannelOptions) -> Self {
        Self { options, tls: None, channels: Arc::default() }
    }

    /// An empty pool whose channels connect with `options`, over TLS when `tls` is given.
    #[must_use]
    pub fn with_tls(options: ChannelOptions, tls: Option<Arc<ClientTls>>) -> Self {
        Self { options, tls, channels: Arc::default() }
    }

    /// The key of the channel to `addr` verified for `name` (the address's host when none).
    fn key(addr: &str, name: Option<&str>) -> (String, String) {
        (addr.to_string(), name.unwrap_or_else(|| host_of(addr)).to_string())
    }

    fn security<'a>(&'a self, key: &'a (String, String)) -> Security<'a> {
        match &self.tls {
            Some(tls) => Security::Tls { tls, name: &key.1 },
            None => Security::Plaintext,
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(generation) = self.tls.as_ref().map(|tls| tls.generation())
            && generation != channels.generation
        {
            tracing::info!(channels = channels.map.len(), "client TLS files changed; reconnecting with the new ones");
            channels.map.clear();
            channels.generation = generation;
        }
        channels.map.get(key).cloned()
    }

    /// The channel to `addr`, connected eagerly when there is none yet: a failure here means
    /// nothing was sent, so trying elsewhere is safe. Over TLS the server's certificate is
    /// verified for `name`, or for the address's host when `name` is `None`.
    ///
    /// # Errors
    /// When `addr` is not a valid address, the TLS files cannot be used or the connection
    /// cannot be made.
    pub async fn connect(&self, addr: &str, name: Option<&str>) -> Result<Channel, ChannelError> {
        let key = Self::key(addr, name);
        if let Some(channel) = self.cached(&key) {
            return Ok(channel);
        }
        let channel = connect(addr, &self.options, self.security(&key)).await?;
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).map.insert(key, channel.clone());
        Ok(channel)
    }

    /// The channel to `addr`, made without connecting when there is none yet (it connects on
    /// first use, and reconnects by itself after a failure); `name` as for
    /// [`connect`](Self::connect).
    ///
    /// # Errors
    /// When `addr` is not a valid address or the TLS files cannot be used.
    pub fn connect_lazy(&self, addr: &str, name: Option<&str>) -> Result<Channel, ChannelError> {
        let key = Self::key(addr, name);
        if let Some(channel) = self.cached(&key) {
            return Ok(channel);
        }
        let channel = endpoint(addr, &self.options, self.security(&key))?.connect_lazy();
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).map.insert(key, channel.clone());
        Ok(channel)
    }

    /// Drops the channels to `addr` (after a transport failure), so the next call reconnects.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).map.retain(|(a, _), _| a != addr);
    }
}
