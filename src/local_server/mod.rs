//! `LocalMemoryService`: a real tonic server speaking the contract subset (EventStreamService +
//! AdminCheckpointService), for tests, benchmarks and the demo. It keeps an outbox with decimal
//! cursors, replays then tails, honours the filters, checks API keys and roles, keeps
//! checkpoints, and can misbehave on purpose: retention (`purge`), slow-consumer eviction,
//! mid-stream `invalidate`, injected status codes, dropped streams, stop/start on the same
//! address, and optional persistence to a directory.
//!
//! - [`outbox`]: the event log, its subscribers and its on-disk form.
//! - [`filter`]: what a subscription receives.
//! - [`service`]: the gRPC services, with auth and the one interceptor (recording, faults).
//! - [`persist`]: the thread that does every file write, off the async handlers and locks.
//!
//! The server keeps a model of a Memory Service's state ([`crate::upstream::Upstream`]): the
//! scenario methods (`create_conversation`, `append_entry`, ...) change it and emit exactly
//! the events a real server emits, rendered per subscriber's `detail` when they are sent.
//! `publish` stays the low-level door: its payload is sent as given in both modes.

mod filter;
mod outbox;
mod persist;
mod service;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use log::{info, warn};
use tokio::sync::{oneshot, Notify};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

use crate::error::{code_from_name, Error, Result};
use crate::proto::admin_checkpoint_service_server::AdminCheckpointServiceServer;
use crate::proto::event_stream_service_server::EventStreamServiceServer;
use crate::upstream::{self, AccessRole, NewEntry, Notification, ResponseStatus, Upstream};
use outbox::{Ctl, Outbox};
use persist::{Job, Persister, StoredCheckpoint};
use service::Svc;

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
    /// The Memory Service's entities. Lock order: the model first, then the outbox, so the
    /// outbox order is the order of the changes.
    model: Mutex<Upstream>,
    outbox: Mutex<Outbox>,
    checkpoints: Mutex<HashMap<String, StoredCheckpoint>>,
    faults: Mutex<HashMap<String, VecDeque<Status>>>,
    seen: Mutex<VecDeque<SeenRequest>>,
    running: Mutex<Option<Running>>,
    bound_port: AtomicU64,
    published: Notify,
    paused: AtomicBool,
    /// The persistence thread, when there is a data directory.
    persist: Option<Persister>,
}

impl State {
    /// Stores (`Some`) or removes (`None`) a checkpoint and queues the new table for the
    /// data directory, under the checkpoints lock so the file sees the writes in order.
    /// Returns whether there was a checkpoint before. Writes nothing itself: callers that
    /// need it on disk wait with `persist.flush()`.
    fn store_checkpoint(&self, client_id: &str, checkpoint: Option<StoredCheckpoint>) -> bool {
        let mut cps = lock(&self.checkpoints);
        let existed = match checkpoint {
            Some(cp) => cps.insert(client_id.to_string(), cp).is_some(),
            None => cps.remove(client_id).is_some(),
        };
        if let Some(p) = &self.persist {
            let table = cps.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            p.send(Job::Checkpoints(table));
        }
        existed
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct LocalMemoryService {
    state: Arc<State>,
}

impl LocalMemoryService {
    /// Builds the server; with a data directory, loads what an earlier instance persisted
    /// there and starts the persistence thread.
    pub fn new(opts: ServerOptions) -> Result<LocalMemoryService> {
        LocalMemoryService::with_model(opts, Upstream::new())
    }

    /// [`LocalMemoryService::new`] with a given model (e.g. [`Upstream::deterministic`] for
    /// reproducible ids and timestamps).
    pub fn with_model(opts: ServerOptions, model: Upstream) -> Result<LocalMemoryService> {
        let (outbox, checkpoints, persist) = match &opts.data_dir {
            None => (Outbox::new(), HashMap::new(), None),
            Some(dir) => {
                let io = |what: &str, e: std::io::Error| {
                    Error::Config(format!("data dir {}: {what}: {e}", dir.display()))
                };
                std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
                let outbox = Outbox::load(dir);
                let checkpoints = persist::load_checkpoints(dir);
                let persist = Persister::spawn(dir).map_err(|e| io("open outbox", e))?;
                (outbox, checkpoints, Some(persist))
            }
        };
        let state = State {
            model: Mutex::new(model),
            outbox: Mutex::new(outbox),
            checkpoints: Mutex::new(checkpoints),
            faults: Mutex::new(HashMap::new()),
            seen: Mutex::new(VecDeque::new()),
            running: Mutex::new(None),
            bound_port: AtomicU64::new(u64::from(opts.port)),
            published: Notify::new(),
            paused: AtomicBool::new(false),
            persist,
            opts,
        };
        Ok(LocalMemoryService {
            state: Arc::new(state),
        })
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
        // everything published or stored so far is on disk when `stop` returns
        if let Some(p) = &self.state.persist {
            p.flush().await;
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
    /// With a data directory the events are written (not fsynced) when this returns.
    pub fn publish_many(&self, events: Vec<(String, String, Bytes)>) -> Vec<String> {
        let mut out = Vec::with_capacity(events.len());
        let mut ob = lock(&self.state.outbox);
        let mut stored = Vec::with_capacity(events.len());
        for (kind, event, data) in events {
            let ev = ob.append(&kind, &event, data);
            out.push(ev.cursor.to_string());
            stored.push(ev);
        }
        if let Some(p) = &self.state.persist {
            // queued under the lock: the file gets the events in cursor order
            p.send(Job::Append(stored));
        }
        drop(ob);
        self.state.published.notify_waiters();
        if let Some(p) = &self.state.persist {
            p.flush_blocking();
        }
        out
    }

    /// Runs one operation of the model and appends the notification it emits, under the
    /// model lock then the outbox lock (so cursors follow the order of the changes). Returns
    /// the operation's value and the event's cursor. With a data directory the event is
    /// written when this returns.
    pub fn apply<T>(
        &self,
        op: impl FnOnce(&mut Upstream) -> upstream::Result<(T, Notification)>,
    ) -> upstream::Result<(T, String)> {
        let mut model = lock(&self.state.model);
        let (value, note) = op(&mut model)?;
        let mut ob = lock(&self.state.outbox);
        let ev = ob.append_model(note);
        if let Some(p) = &self.state.persist {
            p.send(Job::Append(vec![ev.clone()]));
        }
        drop(ob);
        drop(model);
        self.state.published.notify_waiters();
        if let Some(p) = &self.state.persist {
            p.flush_blocking();
        }
        Ok((value, ev.cursor.to_string()))
    }

    /// Creates a conversation owned by `owner` in a new group: `conversation/created`.
    /// Returns the conversation id and the event's cursor.
    pub fn create_conversation(
        &self,
        owner: &str,
        title: &str,
        agent_id: Option<&str>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> upstream::Result<(String, String)> {
        self.apply(|m| m.create_conversation(owner, title, agent_id, metadata))
    }

    /// Changes the title and/or metadata: `conversation/updated`. Returns the cursor.
    pub fn update_conversation(
        &self,
        id: &str,
        title: Option<&str>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> upstream::Result<String> {
        self.apply(|m| Ok(((), m.update_conversation(id, title, metadata)?)))
            .map(|(_, c)| c)
    }

    /// Appends an entry: `entry/created`. Returns the entry id and the cursor.
    pub fn append_entry(
        &self,
        conversation_id: &str,
        new: NewEntry,
    ) -> upstream::Result<(String, String)> {
        self.apply(|m| m.append_entry(conversation_id, new))
    }

    /// Archives: `conversation/updated` with `members` and `archived: true`.
    pub fn archive_conversation(&self, id: &str) -> upstream::Result<String> {
        self.note(|m| m.archive_conversation(id))
    }

    /// Unarchives: `conversation/updated` with `members` and `archived: false`.
    pub fn unarchive_conversation(&self, id: &str) -> upstream::Result<String> {
        self.note(|m| m.unarchive_conversation(id))
    }

    /// Hard delete: `conversation/deleted` (never delivered in full mode, nor are the
    /// conversation's earlier events).
    pub fn delete_conversation(&self, id: &str) -> upstream::Result<String> {
        self.note(|m| m.delete_conversation(id))
    }

    /// `membership/created`.
    pub fn add_member(
        &self,
        conversation_id: &str,
        user: &str,
        role: AccessRole,
    ) -> upstream::Result<String> {
        self.note(|m| m.add_member(conversation_id, user, role))
    }

    /// `membership/updated`.
    pub fn update_member(
        &self,
        conversation_id: &str,
        user: &str,
        role: AccessRole,
    ) -> upstream::Result<String> {
        self.note(|m| m.update_member(conversation_id, user, role))
    }

    /// `membership/deleted`.
    pub fn remove_member(&self, conversation_id: &str, user: &str) -> upstream::Result<String> {
        self.note(|m| m.remove_member(conversation_id, user))
    }

    /// `response/created` (`status: started`).
    pub fn start_response(&self, conversation_id: &str) -> upstream::Result<String> {
        self.note(|m| m.start_response(conversation_id))
    }

    /// `response/deleted` with `status` `completed` or `failed`.
    pub fn finish_response(
        &self,
        conversation_id: &str,
        status: ResponseStatus,
    ) -> upstream::Result<String> {
        self.note(|m| m.finish_response(conversation_id, status))
    }

    fn note(
        &self,
        op: impl FnOnce(&mut Upstream) -> upstream::Result<Notification>,
    ) -> upstream::Result<String> {
        self.apply(|m| Ok(((), op(m)?))).map(|(_, c)| c)
    }

    /// Reads the model (e.g. to check an entity in a test).
    pub fn with_model_state<T>(&self, f: impl FnOnce(&Upstream) -> T) -> T {
        f(&lock(&self.state.model))
    }

    /// Drops events up to and including `through` from retention. Replays from a cursor
    /// before it get `stream/invalidate`.
    pub fn purge(&self, through: u64) {
        let mut ob = lock(&self.state.outbox);
        if let (Some(base), Some(p)) = (ob.purge(through), &self.state.persist) {
            p.send(Job::Base(base));
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

    /// Stores a checkpoint; with a data directory it is on disk (fsynced) when this returns.
    pub fn put_checkpoint(&self, client_id: &str, content_type: &str, value: serde_json::Value) {
        let cp = StoredCheckpoint {
            content_type: content_type.to_string(),
            value,
            updated_at: SystemTime::now(),
        };
        self.state.store_checkpoint(client_id, Some(cp));
        if let Some(p) = &self.state.persist {
            p.flush_blocking();
        }
    }

    /// Removes a checkpoint (on disk too when this returns); true if there was one.
    pub fn delete_checkpoint(&self, client_id: &str) -> bool {
        let removed = self.state.store_checkpoint(client_id, None);
        if let Some(p) = &self.state.persist {
            p.flush_blocking();
        }
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

#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod tests;
