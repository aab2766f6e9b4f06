//! `LocalMemoryService`: a real tonic server speaking the contract subset (EventStreamService +
//! AdminCheckpointService), for tests, benchmarks and the demo. It keeps a durable outbox with
//! decimal cursors, replays then tails, honours the filters, checks API keys and roles, keeps
//! checkpoints, and can misbehave on purpose: retention (`purge`), slow-consumer eviction,
//! mid-stream `invalidate`, injected status codes, dropped streams, stop/start on the same
//! address, and optional persistence to a directory.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use log::{info, warn};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use crate::error::{code_from_name, Error, Result};
use crate::grpc::system_to_timestamp;
use crate::jsonvalue::{json_to_value, value_to_json};
use crate::proto;
use crate::proto::admin_checkpoint_service_server::{
    AdminCheckpointService, AdminCheckpointServiceServer,
};
use crate::proto::event_stream_service_server::{EventStreamService, EventStreamServiceServer};

/// A caller's role, from its API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub host: String,
    pub port: u16,
    pub unix_path: Option<PathBuf>,
    /// `None`: no authentication. Otherwise key → role; bearer tokens are looked up in the
    /// same table.
    pub api_keys: Option<HashMap<String, Role>>,
    /// Live events queued per subscriber before it is evicted as a slow consumer.
    pub queue_capacity: usize,
    /// Persist the outbox and checkpoints here (survives a process restart).
    pub data_dir: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain and key.
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 0,
            unix_path: None,
            api_keys: None,
            queue_capacity: 65_536,
            data_dir: None,
            tls_identity: None,
        }
    }
}

struct StoredEvent {
    cursor: u64,
    note: proto::EventNotification,
    conversation: Option<String>,
    entry_channel: Option<String>,
    entry_content_type: Option<String>,
    entry_role: Option<String>,
}

#[derive(Clone)]
struct StoredCheckpoint {
    content_type: String,
    value: serde_json::Value,
    updated_at: SystemTime,
}

enum Ctl {
    Evict(String),
    Invalidate(String),
    Abort(Status),
}

struct Subscriber {
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<StoredEvent>>,
    ctl: mpsc::UnboundedSender<Ctl>,
}

struct Outbox {
    /// Cursor of `events[0]`; events before it were purged.
    base: u64,
    events: VecDeque<Arc<StoredEvent>>,
    subscribers: Vec<Subscriber>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Outbox {
    fn next_cursor(&self) -> u64 {
        self.base + self.events.len() as u64
    }
}

/// One request as the server saw it (for tests that check what the client sent).
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub metadata: Vec<(String, String)>,
    pub after_cursor: Option<String>,
    pub client_id: Option<String>,
}

struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    endpoint: String,
}

pub struct State {
    opts: ServerOptions,
    outbox: Mutex<Outbox>,
    checkpoints: Mutex<HashMap<String, StoredCheckpoint>>,
    faults: Mutex<HashMap<String, VecDeque<Status>>>,
    seen: Mutex<VecDeque<SeenRequest>>,
    running: Mutex<Option<Running>>,
    bound_port: AtomicU64,
    published: Notify,
    paused: AtomicBool,
}

impl State {
    /// Writes the checkpoints to the data directory, if any (atomically: temp file + rename).
    fn save_checkpoints(&self) {
        let Some(dir) = &self.opts.data_dir else {
            return;
        };
        let cps = lock(&self.checkpoints);
        let map: serde_json::Map<String, serde_json::Value> = cps
            .iter()
            .map(|(id, cp)| {
                let t = cp
                    .updated_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                (
                    id.clone(),
                    serde_json::json!({"content_type": cp.content_type, "value": cp.value, "updated_at": t}),
                )
            })
            .collect();
        drop(cps);
        let tmp = dir.join("checkpoints.json.tmp");
        let text = serde_json::Value::Object(map).to_string();
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, dir.join("checkpoints.json")));
        if let Err(e) = r {
            warn!("LocalMemoryService: cannot persist checkpoints: {e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_str(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

#[derive(Debug)]
struct Filter {
    kinds: Vec<String>,
    conversations: Vec<String>,
    channels: Vec<String>,
    content_types: Vec<String>,
    roles: Vec<String>,
}

impl Filter {
    fn from_request(r: &proto::SubscribeEventsRequest) -> Filter {
        let lower = |v: &Vec<String>| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Filter {
            kinds: lower(&r.kinds),
            conversations: r.conversation_ids.clone(),
            channels: if r.entry_channels.is_empty() {
                vec!["history".into()]
            } else {
                lower(&r.entry_channels)
            },
            content_types: lower(&r.entry_content_types),
            roles: lower(&r.entry_roles),
        }
    }

    fn matches(&self, ev: &StoredEvent) -> bool {
        let kind = ev.note.kind.as_str();
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k.eq_ignore_ascii_case(kind)) {
            return false;
        }
        if !self.conversations.is_empty() {
            match &ev.conversation {
                Some(c) if self.conversations.contains(c) => {}
                _ => return false,
            }
        }
        if kind == "entry" {
            let one_of = |allowed: &Vec<String>, value: &Option<String>| {
                allowed.is_empty()
                    || value
                        .as_ref()
                        .is_some_and(|v| allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
            };
            // an entry without a channel is on the default "history" channel
            let channel = Some(ev.entry_channel.clone().unwrap_or_else(|| "history".into()));
            if !one_of(&self.channels, &channel)
                || !one_of(&self.content_types, &ev.entry_content_type)
                || !one_of(&self.roles, &ev.entry_role)
            {
                return false;
            }
        }
        true
    }
}

fn signal(
    event: &str,
    data: serde_json::Value,
    cursor: Option<String>,
) -> proto::EventNotification {
    proto::EventNotification {
        event: event.into(),
        kind: "stream".into(),
        data: Bytes::from(data.to_string()),
        cursor,
    }
}

/// The server. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct LocalMemoryService {
    state: Arc<State>,
}

impl LocalMemoryService {
    pub fn new(opts: ServerOptions) -> Result<LocalMemoryService> {
        let state = State {
            outbox: Mutex::new(Outbox {
                base: 1,
                events: VecDeque::new(),
                subscribers: Vec::new(),
                file: None,
            }),
            checkpoints: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            seen: Mutex::new(VecDeque::new()),
            running: Mutex::new(None),
            bound_port: AtomicU64::new(u64::from(opts.port)),
            published: Notify::new(),
            paused: AtomicBool::new(false),
            opts,
        };
        let svc = LocalMemoryService {
            state: Arc::new(state),
        };
        if let Some(dir) = svc.state.opts.data_dir.clone() {
            svc.load_dir(&dir)?;
        }
        Ok(svc)
    }

    fn load_dir(&self, dir: &Path) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            Error::Config(format!("data dir {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        let mut ob = lock(&self.state.outbox);
        let meta = dir.join("outbox.base");
        if let Ok(text) = std::fs::read_to_string(&meta) {
            ob.base = text.trim().parse().unwrap_or(1);
        }
        let path = dir.join("outbox.jsonl");
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A torn last line (crash mid-write) is skipped; every full line is an event.
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let (Some(c), Some(kind), Some(event), Some(data)) = (
                    v.get("c").and_then(|c| c.as_u64()),
                    json_str(&v, "k"),
                    json_str(&v, "e"),
                    json_str(&v, "d"),
                ) else {
                    continue;
                };
                if c < ob.base || (!ob.events.is_empty() && c != ob.next_cursor()) {
                    continue;
                }
                if ob.events.is_empty() {
                    ob.base = c;
                }
                let ev = make_event(c, &kind, &event, Bytes::from(data));
                ob.events.push_back(Arc::new(ev));
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("open outbox", e))?;
        ob.file = Some(std::io::BufWriter::new(file));
        drop(ob);
        if let Ok(text) = std::fs::read_to_string(dir.join("checkpoints.json")) {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) {
                let mut cps = lock(&self.state.checkpoints);
                for (id, v) in map {
                    let secs = v.get("updated_at").and_then(|t| t.as_f64()).unwrap_or(0.0);
                    cps.insert(
                        id,
                        StoredCheckpoint {
                            content_type: json_str(&v, "content_type").unwrap_or_default(),
                            value: v.get("value").cloned().unwrap_or(serde_json::Value::Null),
                            updated_at: SystemTime::UNIX_EPOCH
                                + std::time::Duration::from_secs_f64(secs.max(0.0)),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Binds and serves (TCP, or the Unix socket if configured). Returns the endpoint.
    /// After `stop`, `start` binds the same port again.
    pub async fn start(&self) -> Result<String> {
        if let Some(r) = lock(&self.state.running).as_ref() {
            return Ok(r.endpoint.clone());
        }
        let (tx, rx) = oneshot::channel::<()>();
        let events = EventStreamServiceServer::new(Svc {
            state: self.state.clone(),
        })
        .max_encoding_message_size(usize::MAX);
        let checkpoints = AdminCheckpointServiceServer::new(Svc {
            state: self.state.clone(),
        })
        .max_decoding_message_size(64 * 1024 * 1024);
        let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some((cert, key)) = &self.state.opts.tls_identity {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::Config(format!("TLS configuration failed: {e}")))?;
        }
        let scheme = if self.state.opts.tls_identity.is_some() {
            "https://"
        } else {
            ""
        };
        let router = builder.add_service(events).add_service(checkpoints);
        let shutdown = async move {
            let _ = rx.await;
        };
        let (endpoint, done) = if let Some(path) = &self.state.opts.unix_path {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
                Error::Config(format!(
                    "cannot listen on unix socket {}: {e}",
                    path.display()
                ))
            })?;
            let incoming = UnixListenerStream::new(listener);
            let done = tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    warn!("LocalMemoryService stopped with an error: {e}");
                }
            });
            (format!("unix://{}", path.display()), done)
        } else {
            let port = self.state.bound_port.load(Ordering::SeqCst) as u16;
            let addr: SocketAddr = format!("{}:{}", self.state.opts.host, port)
                .parse()
                .map_err(|e| Error::Config(format!("bad listen address: {e}")))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Config(format!("cannot read the bound address: {e}")))?;
            self.state
                .bound_port
                .store(u64::from(local.port()), Ordering::SeqCst);
            // (Server::tcp_nodelay does not apply to a listener we bind ourselves.)
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let done = tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    warn!("LocalMemoryService stopped with an error: {e}");
                }
            });
            (format!("{scheme}{}:{}", local.ip(), local.port()), done)
        };
        info!("LocalMemoryService listening on {endpoint}");
        *lock(&self.state.running) = Some(Running {
            shutdown: Some(tx),
            done: Some(done),
            endpoint: endpoint.clone(),
        });
        Ok(endpoint)
    }

    /// Stops serving: open streams end with `UNAVAILABLE`, the listener closes. The outbox
    /// and checkpoints are kept for a later `start`.
    pub async fn stop(&self) {
        let running = lock(&self.state.running).take();
        self.drop_streams("server stopping");
        if let Some(mut r) = running {
            if let Some(tx) = r.shutdown.take() {
                let _ = tx.send(());
            }
            if let Some(done) = r.done.take() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), done).await;
            }
        }
        if let Some(path) = &self.state.opts.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn endpoint(&self) -> Option<String> {
        lock(&self.state.running)
            .as_ref()
            .map(|r| r.endpoint.clone())
    }

    pub fn port(&self) -> u16 {
        self.state.bound_port.load(Ordering::SeqCst) as u16
    }

    /// Appends events to the outbox and fans them out to live subscribers; returns cursors.
    pub fn publish_many(&self, events: Vec<(String, String, Bytes)>) -> Vec<String> {
        let mut out = Vec::with_capacity(events.len());
        let mut ob = lock(&self.state.outbox);
        for (kind, event, data) in events {
            let cursor = ob.next_cursor();
            let ev = Arc::new(make_event(cursor, &kind, &event, data));
            if let Some(f) = ob.file.as_mut() {
                let line = serde_json::json!({
                    "c": cursor, "k": kind, "e": event,
                    "d": String::from_utf8_lossy(&ev.note.data),
                });
                let _ = writeln!(f, "{line}");
            }
            ob.events.push_back(ev.clone());
            ob.subscribers.retain(|s| {
                if !s.filter.matches(&ev) {
                    return true;
                }
                match s.tx.try_send(ev.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let _ = s.ctl.send(Ctl::Evict("slow consumer".into()));
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            out.push(cursor.to_string());
        }
        if let Some(f) = ob.file.as_mut() {
            let _ = f.flush();
        }
        drop(ob);
        self.state.published.notify_waiters();
        out
    }

    /// Drops events up to and including `through` from retention. Replays from a cursor
    /// before it get `stream/invalidate`.
    pub fn purge(&self, through: u64) {
        let mut ob = lock(&self.state.outbox);
        let new_base = through.saturating_add(1).min(ob.next_cursor());
        if new_base <= ob.base {
            return;
        }
        while ob.events.front().is_some_and(|e| e.cursor < new_base) {
            ob.events.pop_front();
        }
        ob.base = new_base;
        if let Some(dir) = &self.state.opts.data_dir {
            let _ = std::fs::write(dir.join("outbox.base"), ob.base.to_string());
        }
    }

    /// Sends `stream/invalidate` (reason given) to every open live stream.
    pub fn invalidate(&self, reason: &str) {
        for s in lock(&self.state.outbox).subscribers.iter() {
            let _ = s.ctl.send(Ctl::Invalidate(reason.to_string()));
        }
    }

    /// Evicts every open stream (`stream/evicted` with the given reason, then the end).
    pub fn evict_all(&self, reason: &str) {
        let mut ob = lock(&self.state.outbox);
        for s in ob.subscribers.drain(..) {
            let _ = s.ctl.send(Ctl::Evict(reason.to_string()));
        }
    }

    /// Aborts every open stream with `UNAVAILABLE`.
    pub fn drop_streams(&self, message: &str) {
        let mut ob = lock(&self.state.outbox);
        for s in ob.subscribers.drain(..) {
            let _ = s
                .ctl
                .send(Ctl::Abort(Status::unavailable(message.to_string())));
        }
    }

    /// The next `count` calls of `rpc` (`SubscribeEvents`, `GetCheckpoint`, `PutCheckpoint`)
    /// fail with `code` (a gRPC code name such as `UNAVAILABLE`).
    pub fn fail(&self, rpc: &str, code: &str, count: usize, message: &str) -> Result<()> {
        let code = code_from_name(code)
            .ok_or_else(|| Error::Config(format!("unknown gRPC status code {code:?}")))?;
        let rpc =
            canonical_rpc(rpc).ok_or_else(|| Error::Config(format!("unknown rpc {rpc:?}")))?;
        let mut f = lock(&self.state.faults);
        let q = f.entry(rpc.to_string()).or_default();
        for _ in 0..count {
            q.push_back(Status::new(code, message.to_string()));
        }
        Ok(())
    }

    /// Stop (or resume) sending on open streams without closing them: a silent server.
    pub fn set_paused(&self, paused: bool) {
        self.state.paused.store(paused, Ordering::SeqCst);
        self.state.published.notify_waiters();
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).iter().cloned().collect()
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.state.outbox).subscribers.len()
    }

    /// (first retained cursor, next cursor to be assigned).
    pub fn outbox_range(&self) -> (u64, u64) {
        let ob = lock(&self.state.outbox);
        (ob.base, ob.next_cursor())
    }

    pub fn get_checkpoint(
        &self,
        client_id: &str,
    ) -> Option<(String, serde_json::Value, SystemTime)> {
        lock(&self.state.checkpoints)
            .get(client_id)
            .map(|c| (c.content_type.clone(), c.value.clone(), c.updated_at))
    }

    pub fn put_checkpoint(&self, client_id: &str, content_type: &str, value: serde_json::Value) {
        lock(&self.state.checkpoints).insert(
            client_id.to_string(),
            StoredCheckpoint {
                content_type: content_type.to_string(),
                value,
                updated_at: SystemTime::now(),
            },
        );
        self.state.save_checkpoints();
    }

    pub fn delete_checkpoint(&self, client_id: &str) -> bool {
        let removed = lock(&self.state.checkpoints).remove(client_id).is_some();
        self.state.save_checkpoints();
        removed
    }
}

fn canonical_rpc(rpc: &str) -> Option<&'static str> {
    match rpc.to_ascii_lowercase().as_str() {
        "subscribeevents" | "subscribe" => Some("SubscribeEvents"),
        "getcheckpoint" | "get" => Some("GetCheckpoint"),
        "putcheckpoint" | "put" => Some("PutCheckpoint"),
        _ => None,
    }
}

fn make_event(cursor: u64, kind: &str, event: &str, data: Bytes) -> StoredEvent {
    let parsed: serde_json::Value =
        serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
    StoredEvent {
        cursor,
        conversation: json_str(&parsed, "conversation"),
        entry_channel: json_str(&parsed, "entry_channel"),
        entry_content_type: json_str(&parsed, "entry_content_type"),
        entry_role: json_str(&parsed, "entry_role"),
        note: proto::EventNotification {
            event: event.to_string(),
            kind: kind.to_string(),
            data,
            cursor: Some(cursor.to_string()),
        },
    }
}

#[derive(Clone)]
struct Svc {
    state: Arc<State>,
}

impl Svc {
    fn record<T>(
        &self,
        method: &str,
        req: &Request<T>,
        after: Option<String>,
        client: Option<String>,
    ) {
        let md = req.metadata();
        let metadata = ["authorization", "x-api-key", "x-client-id"]
            .iter()
            .filter_map(|k| {
                md.get(*k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (k.to_string(), v.to_string()))
            })
            .collect();
        let mut seen = lock(&self.state.seen);
        if seen.len() >= 1000 {
            seen.pop_front();
        }
        seen.push_back(SeenRequest {
            method: method.into(),
            metadata,
            after_cursor: after,
            client_id: client,
        });
    }

    fn fault(&self, rpc: &str) -> Result<(), Status> {
        match lock(&self.state.faults)
            .get_mut(rpc)
            .and_then(|q| q.pop_front())
        {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Role, Status> {
        let Some(keys) = &self.state.opts.api_keys else {
            return Ok(Role::Admin);
        };
        let md = req.metadata();
        let key = md
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                md.get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        match key {
            None => Err(Status::unauthenticated("missing credentials")),
            Some(k) => keys
                .get(k)
                .copied()
                .ok_or_else(|| Status::unauthenticated("unknown credentials")),
        }
    }

    fn require_admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        match self.authenticate(req)? {
            Role::Admin => Ok(()),
            Role::User => Err(Status::permission_denied(format!(
                "{what} requires the admin role"
            ))),
        }
    }
}

type EventOut =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::EventNotification, Status>> + Send>>;

#[tonic::async_trait]
impl EventStreamService for Svc {
    type SubscribeEventsStream = EventOut;

    async fn subscribe_events(
        &self,
        request: Request<proto::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        self.record(
            "SubscribeEvents",
            &request,
            request.get_ref().after_cursor.clone(),
            None,
        );
        self.fault("SubscribeEvents")?;
        let role = self.authenticate(&request)?;
        let req = request.into_inner();
        match req.detail.as_deref() {
            None | Some("summary") | Some("full") => {}
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "detail must be \"summary\" or \"full\", got {other:?}"
                )))
            }
        }
        let admin_scope = req.scope == Some(proto::EventScope::Admin as i32);
        if admin_scope && role != Role::Admin {
            return Err(Status::permission_denied(
                "admin scope requires the admin role",
            ));
        }
        let filter = Arc::new(Filter::from_request(&req));
        let (out_tx, out_rx) = mpsc::channel(4);
        let (live_tx, live_rx) = mpsc::channel(self.state.opts.queue_capacity.max(1));
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        // Register for live events and fix the replay range under one lock: nothing is missed
        // or sent twice between replay and live.
        let (replay_from, replay_to, stale) = {
            let mut ob = lock(&self.state.outbox);
            let next = ob.next_cursor();
            let (from, stale) = match req.after_cursor.as_deref() {
                None => (next, false),
                Some("start") => (ob.base, false),
                Some(c) => match c.trim().parse::<u64>() {
                    Ok(c) if c.saturating_add(1) < ob.base => (next, true),
                    Ok(c) => (c.saturating_add(1).min(next), false),
                    Err(_) => {
                        return Err(Status::invalid_argument(format!(
                            "malformed after_cursor {c:?}: not a cursor of this server"
                        )))
                    }
                },
            };
            if !stale {
                ob.subscribers.push(Subscriber {
                    filter: filter.clone(),
                    tx: live_tx,
                    ctl: ctl_tx,
                });
            }
            (from, next, stale)
        };
        let state = self.state.clone();
        let with_cursor = req.after_cursor.is_some();
        tokio::spawn(async move {
            stream_task(
                state,
                filter,
                with_cursor,
                stale,
                replay_from,
                replay_to,
                live_rx,
                ctl_rx,
                out_tx,
            )
            .await;
        });
        let stream = ReceiverStream::new(out_rx).flat_map(futures_util::stream::iter);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The stream's outgoing side: chunks of notifications, flattened into the response stream, so
/// a replay costs one channel hand-off per chunk rather than per event.
type Out = mpsc::Sender<Vec<Result<proto::EventNotification, Status>>>;

/// Most live events sent in one chunk.
const LIVE_CHUNK: usize = 256;

async fn emit(out: &Out, n: proto::EventNotification) -> bool {
    out.send(vec![Ok(n)]).await.is_ok()
}

async fn wait_unpaused(state: &State) {
    while state.paused.load(Ordering::SeqCst) {
        let n = state.published.notified();
        if !state.paused.load(Ordering::SeqCst) {
            break;
        }
        n.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_task(
    state: Arc<State>,
    filter: Arc<Filter>,
    with_cursor: bool,
    stale: bool,
    from: u64,
    to: u64,
    mut live: mpsc::Receiver<Arc<StoredEvent>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    out: Out,
) {
    let mut last_cursor: Option<String> = None;
    if with_cursor {
        if !emit(
            &out,
            signal("phase", serde_json::json!({"phase": "replay"}), None),
        )
        .await
        {
            return;
        }
        if stale {
            let reason = serde_json::json!({"reason": "cursor beyond retention window"});
            emit(&out, signal("invalidate", reason, None)).await;
            return;
        }
        let mut next = from;
        while next < to {
            let chunk: Vec<Arc<StoredEvent>> = {
                let ob = lock(&state.outbox);
                let start = next.saturating_sub(ob.base) as usize;
                ob.events
                    .iter()
                    .skip(start)
                    .take(((to - next) as usize).min(1024))
                    .cloned()
                    .collect()
            };
            let Some(last) = chunk.last() else {
                break;
            };
            next = last.cursor + 1;
            let notes: Vec<_> = chunk
                .iter()
                .filter(|ev| filter.matches(ev))
                .map(|ev| Ok(ev.note.clone()))
                .collect();
            if let Some(Ok(n)) = notes.last() {
                last_cursor = n.cursor.clone();
            }
            if !notes.is_empty() && out.send(notes).await.is_err() {
                return;
            }
            if let Ok(c) = ctl.try_recv() {
                if handle_ctl(c, &out, &last_cursor).await {
                    return;
                }
            }
        }
    }
    if !emit(
        &out,
        signal("phase", serde_json::json!({"phase": "live"}), None),
    )
    .await
    {
        return;
    }
    loop {
        wait_unpaused(&state).await;
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(c) => if handle_ctl(c, &out, &last_cursor).await { return },
                None => return,
            },
            ev = live.recv() => match ev {
                Some(ev) => {
                    // a paused server holds what it has until resumed
                    wait_unpaused(&state).await;
                    let mut notes = vec![Ok(ev.note.clone())];
                    while notes.len() < LIVE_CHUNK {
                        match live.try_recv() {
                            Ok(ev) => notes.push(Ok(ev.note.clone())),
                            Err(_) => break,
                        }
                    }
                    if let Some(Ok(n)) = notes.last() {
                        last_cursor = n.cursor.clone();
                    }
                    if out.send(notes).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            _ = out.closed() => return,
        }
    }
}

/// Returns true when the stream must end.
async fn handle_ctl(c: Ctl, out: &Out, last_cursor: &Option<String>) -> bool {
    match c {
        Ctl::Evict(reason) => {
            let data = serde_json::json!({"reason": reason});
            emit(out, signal("evicted", data, last_cursor.clone())).await;
            true
        }
        Ctl::Invalidate(reason) => {
            let data = serde_json::json!({"reason": reason});
            !emit(out, signal("invalidate", data, None)).await
        }
        Ctl::Abort(status) => {
            let _ = out.send(vec![Err(status)]).await;
            true
        }
    }
}

#[tonic::async_trait]
impl AdminCheckpointService for Svc {
    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::AdminCheckpoint>, Status> {
        self.record(
            "GetCheckpoint",
            &request,
            None,
            Some(request.get_ref().client_id.clone()),
        );
        self.fault("GetCheckpoint")?;
        self.require_admin(&request, "checkpoints")?;
        let id = request.into_inner().client_id;
        if id.trim().is_empty() {
            return Err(Status::invalid_argument("client_id is required"));
        }
        let cps = lock(&self.state.checkpoints);
        let cp = cps
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("no checkpoint for client_id {id:?}")))?;
        Ok(Response::new(proto::AdminCheckpoint {
            client_id: id.clone(),
            content_type: cp.content_type.clone(),
            value: Some(json_to_value(&cp.value)),
            updated_at: Some(system_to_timestamp(cp.updated_at)),
        }))
    }

    async fn put_checkpoint(
        &self,
        request: Request<proto::PutCheckpointRequest>,
    ) -> Result<Response<proto::AdminCheckpoint>, Status> {
        self.record(
            "PutCheckpoint",
            &request,
            None,
            Some(request.get_ref().client_id.clone()),
        );
        self.fault("PutCheckpoint")?;
        self.require_admin(&request, "checkpoints")?;
        let req = request.into_inner();
        if req.client_id.trim().is_empty() {
            return Err(Status::invalid_argument("client_id is required"));
        }
        if req.content_type.trim().is_empty() {
            return Err(Status::invalid_argument("content_type is required"));
        }
        let Some(value) = req.value else {
            return Err(Status::invalid_argument("value is required"));
        };
        let now = SystemTime::now();
        let json = value_to_json(&value);
        lock(&self.state.checkpoints).insert(
            req.client_id.clone(),
            StoredCheckpoint {
                content_type: req.content_type.clone(),
                value: json,
                updated_at: now,
            },
        );
        self.state.save_checkpoints();
        Ok(Response::new(proto::AdminCheckpoint {
            client_id: req.client_id,
            content_type: req.content_type,
            value: Some(value),
            updated_at: Some(system_to_timestamp(now)),
        }))
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
