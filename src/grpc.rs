//! tonic clients for the Memory Service: endpoint parsing (plaintext, TLS, Unix sockets), auth
//! metadata, keepalive, and the two services behind the [`EventClient`] / [`CheckpointClient`]
//! traits.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};
use crate::jsonvalue::{json_to_value, value_to_json};
use crate::model::{
    Checkpoint, CheckpointClient, Event, EventClient, EventStream, Scope, SubscribeRequest,
};
use crate::proto;
use crate::proto::admin_checkpoint_service_client::AdminCheckpointServiceClient;
use crate::proto::event_stream_service_client::EventStreamServiceClient;

/// Default gRPC receive limit (tonic's and grpc-go's default).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The longest duration a connection option may be (365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// How to reach and authenticate to a Memory Service. `Debug` never shows secrets.
#[derive(Clone)]
pub struct ConnectOptions {
    pub endpoint: String,
    pub api_key: Option<String>,
    pub bearer_token: Option<String>,
    pub client_id: Option<String>,
    /// PEM file of the CA to trust for `https://` (default: the system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Override of the TLS server name (default: the endpoint's host).
    pub tls_server_name: Option<String>,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_message_size: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            endpoint: String::new(),
            api_key: None,
            bearer_token: None,
            client_id: None,
            tls_ca_file: None,
            tls_server_name: None,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("client_id", &self.client_id)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish_non_exhaustive()
    }
}

/// The transport an endpoint string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Plain(String),
    Tls(String),
    Unix(PathBuf),
}

/// Parses `host:port`, `http://host:port`, `https://host:port` or `unix:///abs/path.sock`.
pub fn parse_endpoint(endpoint: &str) -> Result<Target> {
    let e = endpoint.trim();
    let bad = |why: &str| {
        Error::Config(format!(
            "invalid endpoint {e:?}: {why} (expected host:port, http://host:port, https://host:port or unix:///path.sock)"
        ))
    };
    if e.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(path) = e.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("a unix socket path must be absolute"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let (tls, rest) = if let Some(r) = e.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("http://") {
        (false, r)
    } else if e.contains("://") {
        return Err(bad("unsupported scheme"));
    } else {
        (false, e)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(bad("expected host:port"));
    }
    let uri: http::Uri = format!("http://{rest}")
        .parse()
        .map_err(|_| bad("not a valid host:port"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("missing host"));
    }
    if uri.port_u16().is_none() && !tls {
        return Err(bad("missing port"));
    }
    Ok(if tls {
        Target::Tls(format!("https://{rest}"))
    } else {
        Target::Plain(format!("http://{rest}"))
    })
}

/// A connected (lazily) channel plus the metadata every request carries.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    metadata: Arc<Vec<(&'static str, AsciiMetadataValue)>>,
    request_timeout: Duration,
    max_message_size: usize,
    /// The API key and bearer token, to redact from the server's messages.
    secrets: Arc<Vec<String>>,
}

fn secret_value(name: &str, value: &str) -> Result<AsciiMetadataValue> {
    let mut v: AsciiMetadataValue = value.parse().map_err(|_| {
        Error::Config(format!(
            "{name} contains characters that cannot be sent as gRPC metadata"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Connection {
    /// Builds the channel. Connecting is lazy: an unreachable server surfaces as a transient
    /// `UNAVAILABLE` on the first call and is retried by the loop.
    pub fn new(opts: &ConnectOptions) -> Result<Connection> {
        for (name, d) in [
            ("keepalive_interval", opts.keepalive_interval),
            ("keepalive_timeout", opts.keepalive_timeout),
            ("connect_timeout", opts.connect_timeout),
            ("request_timeout", opts.request_timeout),
        ] {
            // Timers add these to `Instant::now()`; beyond a year is a mistake, not a setting.
            if d.is_zero() || d > MAX_DURATION {
                return Err(Error::Config(format!(
                    "{name} must be between 1ns and 365 days, got {d:?}"
                )));
            }
        }
        let mut metadata = Vec::new();
        if let Some(token) = opts.bearer_token.as_deref().filter(|t| !t.is_empty()) {
            metadata.push((
                "authorization",
                secret_value("bearer_token", &format!("Bearer {token}"))?,
            ));
        }
        if let Some(key) = opts.api_key.as_deref().filter(|k| !k.is_empty()) {
            metadata.push(("x-api-key", secret_value("api_key", key)?));
        }
        if let Some(id) = opts.client_id.as_deref().filter(|c| !c.is_empty()) {
            let v: AsciiMetadataValue = id.parse().map_err(|_| {
                Error::Config(format!(
                    "client_id {id:?} contains characters that cannot be sent as gRPC metadata"
                ))
            })?;
            metadata.push(("x-client-id", v));
        }
        let secrets: Vec<String> = [&opts.api_key, &opts.bearer_token]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        let target = parse_endpoint(&opts.endpoint)?;
        let uri = match &target {
            Target::Plain(u) | Target::Tls(u) => u.clone(),
            Target::Unix(_) => "http://localhost".to_string(),
        };
        let mut ep = Endpoint::from_shared(uri)
            .map_err(|e| Error::Config(format!("invalid endpoint {:?}: {e}", opts.endpoint)))?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(opts.keepalive_interval)
            .keep_alive_timeout(opts.keepalive_timeout)
            .keep_alive_while_idle(true);
        if let Target::Tls(_) = &target {
            let mut tls = ClientTlsConfig::new();
            match &opts.tls_ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        Error::Config(format!("cannot read tls_ca_file {}: {e}", path.display()))
                    })?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            if let Some(name) = &opts.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("TLS configuration failed: {e}")))?;
        }
        let channel = match target {
            Target::Unix(path) => {
                let path = Arc::new(path);
                ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path.as_path()).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
            }
            _ => ep.connect_lazy(),
        };
        Ok(Connection {
            channel,
            metadata: Arc::new(metadata),
            request_timeout: opts.request_timeout,
            max_message_size: opts.max_message_size,
            secrets: Arc::new(secrets),
        })
    }

    /// The core error for a status `method` got, with this connection's secrets redacted.
    fn status_error(&self, method: &str, status: &tonic::Status) -> Error {
        status_error(&self.secrets, method, status)
    }

    fn request<T>(&self, msg: T, unary: bool) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md: &mut MetadataMap = req.metadata_mut();
        for (k, v) in self.metadata.iter() {
            md.insert(*k, v.clone());
        }
        if unary {
            req.set_timeout(self.request_timeout);
        }
        req
    }
}

/// `EventStreamService` over gRPC.
#[derive(Clone)]
pub struct GrpcEventClient {
    conn: Connection,
}

impl GrpcEventClient {
    pub fn new(conn: Connection) -> Self {
        GrpcEventClient { conn }
    }
}

pub fn to_proto_request(r: &SubscribeRequest) -> proto::SubscribeEventsRequest {
    proto::SubscribeEventsRequest {
        conversation_ids: r.conversation_ids.clone(),
        kinds: r.kinds.clone(),
        after_cursor: r.after_cursor.clone(),
        detail: r.detail.clone(),
        scope: Some(match r.scope {
            Scope::Admin => proto::EventScope::Admin as i32,
            Scope::User => proto::EventScope::Authorized as i32,
        }),
        justification: r.justification.clone().filter(|j| !j.is_empty()),
        entry_channels: r.entry_channels.clone(),
        entry_content_types: r.entry_content_types.clone(),
        entry_roles: r.entry_roles.clone(),
    }
}

fn status_error(secrets: &[String], method: &str, status: &tonic::Status) -> Error {
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    Error::from_status_redacted(method, status, &secrets)
}

struct GrpcStream {
    inner: tonic::Streaming<proto::EventNotification>,
    secrets: Arc<Vec<String>>,
}

#[async_trait]
impl EventStream for GrpcStream {
    async fn recv(&mut self) -> Result<Option<Event>> {
        match self.inner.message().await {
            Ok(Some(n)) => Ok(Some(Event {
                event: n.event,
                kind: n.kind,
                data: n.data,
                cursor: n.cursor,
                received: SystemTime::now(),
                shard: crate::model::ShardMark::Undecided,
            })),
            Ok(None) => Ok(None),
            Err(status) => Err(status_error(&self.secrets, "SubscribeEvents", &status)),
        }
    }
}

#[async_trait]
impl EventClient for GrpcEventClient {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Box<dyn EventStream>> {
        let mut client = EventStreamServiceClient::new(self.conn.channel.clone())
            .max_decoding_message_size(self.conn.max_message_size);
        let req = self.conn.request(to_proto_request(&request), false);
        let resp = client
            .subscribe_events(req)
            .await
            .map_err(|s| self.conn.status_error("SubscribeEvents", &s))?;
        Ok(Box::new(GrpcStream {
            inner: resp.into_inner(),
            secrets: self.conn.secrets.clone(),
        }))
    }
}

/// `AdminCheckpointService` over gRPC.
#[derive(Clone)]
pub struct GrpcCheckpointClient {
    conn: Connection,
}

impl GrpcCheckpointClient {
    pub fn new(conn: Connection) -> Self {
        GrpcCheckpointClient { conn }
    }
}

pub fn timestamp_to_system(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

pub fn system_to_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn from_proto_checkpoint(cp: proto::AdminCheckpoint) -> Checkpoint {
    Checkpoint {
        client_id: cp.client_id,
        content_type: cp.content_type,
        value: cp
            .value
            .as_ref()
            .map(value_to_json)
            .unwrap_or(serde_json::Value::Null),
        updated_at: cp.updated_at.as_ref().and_then(timestamp_to_system),
    }
}

#[async_trait]
impl CheckpointClient for GrpcCheckpointClient {
    async fn get(&self, client_id: &str) -> Result<Checkpoint> {
        let mut client = AdminCheckpointServiceClient::new(self.conn.channel.clone())
            .max_decoding_message_size(self.conn.max_message_size);
        let req = self.conn.request(
            proto::GetCheckpointRequest {
                client_id: client_id.to_string(),
            },
            true,
        );
        match client.get_checkpoint(req).await {
            Ok(resp) => Ok(from_proto_checkpoint(resp.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(Error::CheckpointNotFound(client_id.to_string()))
            }
            Err(s) => Err(self.conn.status_error("GetCheckpoint", &s)),
        }
    }

    async fn put(
        &self,
        client_id: &str,
        content_type: &str,
        value: &serde_json::Value,
    ) -> Result<Checkpoint> {
        let mut client = AdminCheckpointServiceClient::new(self.conn.channel.clone())
            .max_decoding_message_size(self.conn.max_message_size)
            .max_encoding_message_size(usize::MAX);
        let req = self.conn.request(
            proto::PutCheckpointRequest {
                client_id: client_id.to_string(),
                content_type: content_type.to_string(),
                value: Some(json_to_value(value)),
            },
            true,
        );
        client
            .put_checkpoint(req)
            .await
            .map(|r| from_proto_checkpoint(r.into_inner()))
            .map_err(|s| self.conn.status_error("PutCheckpoint", &s))
    }

    fn max_message_size(&self) -> Option<usize> {
        Some(self.conn.max_message_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_endpoints_of_the_ecosystem() {
        assert_eq!(
            parse_endpoint("localhost:8082").unwrap(),
            Target::Plain("http://localhost:8082".into())
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9000/").unwrap(),
            Target::Plain("http://127.0.0.1:9000".into())
        );
        assert_eq!(
            parse_endpoint("https://memory.example.com").unwrap(),
            Target::Tls("https://memory.example.com".into())
        );
        assert_eq!(
            parse_endpoint("unix:///tmp/ms.sock").unwrap(),
            Target::Unix("/tmp/ms.sock".into())
        );
        for bad in [
            "",
            "localhost",
            "ftp://x:1",
            "unix://rel.sock",
            "http://",
            "a b:1",
            "host:port",
        ] {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains("invalid endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let o = ConnectOptions {
            endpoint: "localhost:1".into(),
            api_key: Some("sekrit-key".into()),
            bearer_token: Some("sekrit-token".into()),
            ..ConnectOptions::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("sekrit"), "{s}");
    }

    #[test]
    fn secrets_that_cannot_be_metadata_are_refused_without_echo() {
        let o = ConnectOptions {
            endpoint: "localhost:1".into(),
            api_key: Some("bad\nkey-sekrit".into()),
            ..ConnectOptions::default()
        };
        let err = match Connection::new(&o) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(!err.contains("sekrit"), "{err}");
    }
}
