//! The configuration structs crossing the boundary, read by attribute name from the Python
//! objects. Python counterparts: `Config` (`_config.py`), `ConnectionOptions` and
//! `SubscribeRequest` (`_model.py`). `scope` and `stale_cursor` are parsed here, once.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

use super::errors::config_error;
use crate::grpc::ConnectOptions;
use crate::lanes::OnFailure;
use crate::model::{LoopConfig, Scope, StalePolicy, SubscribeRequest};

/// A positive, finite number of seconds (a checked conversion: a ConfigurationError naming
/// the field, never a panic).
fn secs(d: f64, name: &str) -> PyResult<Duration> {
    if !d.is_finite() || d <= 0.0 {
        return Err(config_error(format!(
            "{name} must be a positive number of seconds, got {d}"
        )));
    }
    Duration::try_from_secs_f64(d).map_err(|_| config_error(format!("{name} is out of range: {d}")))
}

/// The one parser of `scope` (`None` is the default, admin).
fn scope(text: Option<&str>) -> PyResult<Scope> {
    match text {
        None => Ok(Scope::Admin),
        Some(text) => Scope::parse(text).ok_or_else(|| {
            config_error(format!("scope must be \"admin\" or \"user\", got {text:?}"))
        }),
    }
}

/// The one parser of `stale_cursor`.
fn stale_policy(text: &str) -> PyResult<StalePolicy> {
    StalePolicy::parse(text).ok_or_else(|| {
        config_error(format!(
            "stale_cursor must be \"fail\", \"restart\" or \"tail\", got {text:?}"
        ))
    })
}

/// A sequence of strings; `None` is empty.
fn strings(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if obj.is_none() {
        Ok(Vec::new())
    } else {
        obj.extract()
    }
}

/// `Config`'s attributes (durations in seconds, already validated by `Config`).
#[derive(FromPyObject)]
pub struct DriverConfig {
    #[pyo3(attribute)]
    client_id: String,
    #[pyo3(attribute, from_py_with = strings)]
    kinds: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    conversation_ids: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_channels: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_content_types: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_roles: Vec<String>,
    #[pyo3(attribute)]
    scope: Option<String>,
    #[pyo3(attribute)]
    after_cursor: Option<String>,
    #[pyo3(attribute)]
    justification: Option<String>,
    #[pyo3(attribute)]
    checkpoint_interval: f64,
    #[pyo3(attribute)]
    checkpoint_every: u64,
    #[pyo3(attribute)]
    reconnect_min: f64,
    #[pyo3(attribute)]
    reconnect_max: f64,
    #[pyo3(attribute)]
    stale_cursor: String,
    #[pyo3(attribute)]
    buffer_size: usize,
    #[pyo3(attribute)]
    buffer_bytes: usize,
    #[pyo3(attribute)]
    max_batch: usize,
    #[pyo3(attribute)]
    stop_timeout: f64,
    #[pyo3(attribute)]
    detect_other_writers: bool,
    #[pyo3(attribute)]
    max_concurrency: usize,
    #[pyo3(attribute)]
    max_attempts: u32,
    #[pyo3(attribute)]
    retry_min: f64,
    #[pyo3(attribute)]
    retry_max: f64,
    #[pyo3(attribute)]
    on_failure: String,
    #[pyo3(attribute)]
    shard_count: u32,
    #[pyo3(attribute)]
    shard_index: u32,
}

/// The one parser of `on_failure`.
fn on_failure(text: &str) -> PyResult<OnFailure> {
    OnFailure::parse(text).ok_or_else(|| {
        config_error(format!(
            "on_failure must be \"stop\" or \"skip\", got {text:?}"
        ))
    })
}

impl DriverConfig {
    /// The loop's configuration (the driver validates it again).
    pub fn into_loop_config(self) -> PyResult<LoopConfig> {
        Ok(LoopConfig {
            client_id: self.client_id,
            kinds: self.kinds,
            conversation_ids: self.conversation_ids,
            entry_channels: self.entry_channels,
            entry_content_types: self.entry_content_types,
            entry_roles: self.entry_roles,
            scope: scope(self.scope.as_deref())?,
            after_cursor: self.after_cursor.filter(|c| !c.is_empty()),
            justification: self.justification,
            checkpoint_interval: secs(self.checkpoint_interval, "checkpoint_interval")?,
            checkpoint_every: self.checkpoint_every,
            reconnect_min: secs(self.reconnect_min, "reconnect_min")?,
            reconnect_max: secs(self.reconnect_max, "reconnect_max")?,
            stale_cursor: stale_policy(&self.stale_cursor)?,
            buffer_size: self.buffer_size,
            buffer_bytes: self.buffer_bytes,
            max_batch: self.max_batch,
            stop_timeout: secs(self.stop_timeout, "stop_timeout")?,
            detect_other_writers: self.detect_other_writers,
            max_concurrency: self.max_concurrency,
            max_attempts: self.max_attempts,
            retry_min: secs(self.retry_min, "retry_min")?,
            retry_max: secs(self.retry_max, "retry_max")?,
            on_failure: on_failure(&self.on_failure)?,
            custom_key: false,
            shard_count: self.shard_count,
            shard_index: self.shard_index,
        })
    }
}

/// `ConnectionOptions`' attributes; the secrets come from its private `_api_key` and
/// `_bearer_token`, so they never pass through a public name.
#[derive(FromPyObject)]
pub struct ConnectionConfig {
    #[pyo3(attribute)]
    endpoint: String,
    #[pyo3(attribute("_api_key"))]
    api_key: Option<String>,
    #[pyo3(attribute("_bearer_token"))]
    bearer_token: Option<String>,
    #[pyo3(attribute)]
    client_id: Option<String>,
    #[pyo3(attribute)]
    tls_ca_file: Option<PathBuf>,
    #[pyo3(attribute)]
    tls_server_name: Option<String>,
    #[pyo3(attribute)]
    keepalive_interval: f64,
    #[pyo3(attribute)]
    keepalive_timeout: f64,
    #[pyo3(attribute)]
    connect_timeout: f64,
    #[pyo3(attribute)]
    request_timeout: f64,
    #[pyo3(attribute)]
    max_message_size: usize,
}

impl ConnectionConfig {
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The transport's options.
    pub fn into_connect_options(self) -> PyResult<ConnectOptions> {
        if self.max_message_size == 0 {
            return Err(config_error("max_message_size must be at least 1".into()));
        }
        Ok(ConnectOptions {
            endpoint: self.endpoint,
            api_key: self.api_key,
            bearer_token: self.bearer_token,
            client_id: self.client_id,
            tls_ca_file: self.tls_ca_file,
            tls_server_name: self.tls_server_name,
            keepalive_interval: secs(self.keepalive_interval, "keepalive_interval")?,
            keepalive_timeout: secs(self.keepalive_timeout, "keepalive_timeout")?,
            connect_timeout: secs(self.connect_timeout, "connect_timeout")?,
            request_timeout: secs(self.request_timeout, "request_timeout")?,
            max_message_size: self.max_message_size,
        })
    }
}

/// `SubscribeRequest`'s attributes.
#[derive(FromPyObject)]
pub struct SubscribeConfig {
    #[pyo3(attribute, from_py_with = strings)]
    kinds: Vec<String>,
    #[pyo3(attribute)]
    detail: Option<String>,
    #[pyo3(attribute)]
    after_cursor: Option<String>,
    #[pyo3(attribute)]
    scope: Option<String>,
    #[pyo3(attribute)]
    justification: Option<String>,
    #[pyo3(attribute, from_py_with = strings)]
    conversation_ids: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_channels: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_content_types: Vec<String>,
    #[pyo3(attribute, from_py_with = strings)]
    entry_roles: Vec<String>,
}

impl SubscribeConfig {
    /// The transport-neutral request.
    pub fn into_request(self) -> PyResult<SubscribeRequest> {
        let c = self;
        Ok(SubscribeRequest {
            kinds: c.kinds,
            detail: c.detail,
            after_cursor: c.after_cursor,
            scope: scope(c.scope.as_deref())?,
            justification: c.justification,
            conversation_ids: c.conversation_ids,
            entry_channels: c.entry_channels,
            entry_content_types: c.entry_content_types,
            entry_roles: c.entry_roles,
        })
    }
}
