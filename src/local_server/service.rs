//! The gRPC services (EventStreamService, AdminCheckpointService) over the server's state.
//!
//! Every RPC first passes [`Svc::intercept`], the one place that records the request (for
//! tests that check what a client sent), injects the faults queued by
//! `LocalMemoryService::fail`, and authenticates the caller, in that order.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::filter::Filter;
use super::outbox::{Ctl, StoredEvent, Subscriber};
use super::persist::StoredCheckpoint;
use super::{lock, Role, SeenRequest, State};
use crate::grpc::system_to_timestamp;
use crate::jsonvalue::{json_to_value, value_to_json};
use crate::proto;
use crate::proto::admin_checkpoint_service_server::AdminCheckpointService;
use crate::proto::event_stream_service_server::EventStreamService;

/// Requests the interceptor knows: the RPC's name and the fields it records.
pub(super) trait Inspect {
    /// The RPC, as `LocalMemoryService::fail` names it.
    const METHOD: &'static str;
    fn after_cursor(&self) -> Option<String> {
        None
    }
    fn client_id(&self) -> Option<String> {
        None
    }
}

impl Inspect for proto::SubscribeEventsRequest {
    const METHOD: &'static str = "SubscribeEvents";
    fn after_cursor(&self) -> Option<String> {
        self.after_cursor.clone()
    }
}

impl Inspect for proto::GetCheckpointRequest {
    const METHOD: &'static str = "GetCheckpoint";
    fn client_id(&self) -> Option<String> {
        Some(self.client_id.clone())
    }
}

impl Inspect for proto::PutCheckpointRequest {
    const METHOD: &'static str = "PutCheckpoint";
    fn client_id(&self) -> Option<String> {
        Some(self.client_id.clone())
    }
}

/// Most requests kept for `LocalMemoryService::requests`.
const SEEN_LIMIT: usize = 1000;

#[derive(Clone)]
pub(super) struct Svc {
    pub state: Arc<State>,
}

impl Svc {
    /// Records the request, fails it if a fault is queued for its RPC, and returns the
    /// caller's role.
    fn intercept<T: Inspect>(&self, req: &Request<T>) -> Result<Role, Status> {
        self.record(req);
        let fault = lock(&self.state.faults)
            .get_mut(T::METHOD)
            .and_then(|q| q.pop_front());
        if let Some(status) = fault {
            return Err(status);
        }
        self.authenticate(req)
    }

    fn record<T: Inspect>(&self, req: &Request<T>) {
        let md = req.metadata();
        let metadata = ["authorization", "x-api-key", "x-client-id"]
            .iter()
            .filter_map(|k| {
                md.get(*k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (k.to_string(), v.to_string()))
            })
            .collect();
        let seen = SeenRequest {
            method: T::METHOD.into(),
            metadata,
            after_cursor: req.get_ref().after_cursor(),
            client_id: req.get_ref().client_id(),
        };
        let mut log = lock(&self.state.seen);
        if log.len() >= SEEN_LIMIT {
            log.pop_front();
        }
        log.push_back(seen);
    }

    /// The caller's role from `x-api-key` or `authorization: Bearer ...` (everyone is an
    /// admin when the server has no keys).
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
}

fn require_admin(role: Role, what: &str) -> Result<(), Status> {
    match role {
        Role::Admin => Ok(()),
        Role::User => Err(Status::permission_denied(format!(
            "{what} requires the admin role"
        ))),
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
        let role = self.intercept(&request)?;
        let req = request.into_inner();
        let filter = Arc::new(Filter::from_request(&req, role)?);
        let (out_tx, out_rx) = mpsc::channel(4);
        let (live_tx, live_rx) = mpsc::channel(self.state.opts.queue_capacity.max(1));
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        // Register for live events and fix the replay range under one lock: nothing is missed
        // or sent twice between replay and live.
        let range = {
            let mut ob = lock(&self.state.outbox);
            let range = ob.replay_range(req.after_cursor.as_deref());
            if !range.stale {
                ob.subscribers.push(Subscriber {
                    filter: filter.clone(),
                    tx: live_tx,
                    ctl: ctl_tx,
                });
            }
            range
        };
        let task = StreamTask {
            state: self.state.clone(),
            filter,
            live: live_rx,
            ctl: ctl_rx,
            out: out_tx,
            last_cursor: None,
        };
        let replay = req.after_cursor.is_some().then_some(range);
        tokio::spawn(task.run(replay));
        let stream = ReceiverStream::new(out_rx).flat_map(futures_util::stream::iter);
        Ok(Response::new(Box::pin(stream)))
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

/// The stream's outgoing side: chunks of notifications, flattened into the response stream, so
/// a replay costs one channel hand-off per chunk rather than per event.
type Out = mpsc::Sender<Vec<Result<proto::EventNotification, Status>>>;

/// Most live events sent in one chunk.
const LIVE_CHUNK: usize = 256;

/// Most events replayed in one chunk (and read under the outbox lock at once).
const REPLAY_CHUNK: usize = 1024;

/// One open stream: replay (if asked for), then live events and control messages.
struct StreamTask {
    state: Arc<State>,
    filter: Arc<Filter>,
    live: mpsc::Receiver<Arc<StoredEvent>>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    out: Out,
    /// The cursor of the last event sent (for `stream/evicted`).
    last_cursor: Option<String>,
}

impl StreamTask {
    async fn run(mut self, replay: Option<super::outbox::ReplayRange>) {
        if let Some(range) = replay {
            if !self.replay(range).await {
                return;
            }
        }
        let live = signal("phase", serde_json::json!({"phase": "live"}), None);
        if !self.emit(live).await {
            return;
        }
        loop {
            self.wait_unpaused().await;
            tokio::select! {
                biased;
                c = self.ctl.recv() => match c {
                    Some(c) => if self.handle_ctl(c).await { return },
                    None => return,
                },
                ev = self.live.recv() => match ev {
                    Some(ev) => {
                        // a paused server holds what it has until resumed
                        self.wait_unpaused().await;
                        let mut events = vec![ev];
                        while events.len() < LIVE_CHUNK {
                            match self.live.try_recv() {
                                Ok(ev) => events.push(ev),
                                Err(_) => break,
                            }
                        }
                        let notes = self.render(&events);
                        if let Some(Ok(n)) = notes.last() {
                            self.last_cursor = n.cursor.clone();
                        }
                        if !notes.is_empty() && self.out.send(notes).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = self.out.closed() => return,
            }
        }
    }

    /// The replay phase; false when the stream must end.
    async fn replay(&mut self, range: super::outbox::ReplayRange) -> bool {
        let replay = signal("phase", serde_json::json!({"phase": "replay"}), None);
        if !self.emit(replay).await {
            return false;
        }
        if range.stale {
            let reason = serde_json::json!({"reason": "cursor beyond retention window"});
            self.emit(signal("invalidate", reason, None)).await;
            return false;
        }
        let mut next = range.from;
        while next < range.to {
            let chunk = lock(&self.state.outbox).chunk(next, range.to, REPLAY_CHUNK);
            let Some(last) = chunk.last() else {
                break;
            };
            next = last.cursor + 1;
            let passing: Vec<_> = chunk
                .into_iter()
                .filter(|ev| ev.passes(&self.filter))
                .collect();
            let notes = self.render(&passing);
            if let Some(Ok(n)) = notes.last() {
                self.last_cursor = n.cursor.clone();
            }
            if !notes.is_empty() && self.out.send(notes).await.is_err() {
                return false;
            }
            if let Ok(c) = self.ctl.try_recv() {
                if self.handle_ctl(c).await {
                    return false;
                }
            }
        }
        true
    }

    /// The events as this subscriber receives them, rendered for its detail mode from the
    /// model's current state (under the model lock; sent after it is released). An event
    /// whose entity is gone is skipped, with no cursor sent.
    fn render(&self, events: &[Arc<StoredEvent>]) -> Vec<Result<proto::EventNotification, Status>> {
        let model = lock(&self.state.model);
        events
            .iter()
            .filter_map(|ev| ev.render(&model, self.filter.detail))
            .map(Ok)
            .collect()
    }

    async fn emit(&self, n: proto::EventNotification) -> bool {
        self.out.send(vec![Ok(n)]).await.is_ok()
    }

    async fn wait_unpaused(&self) {
        let state = &self.state;
        while state.paused.load(Ordering::SeqCst) {
            let n = state.published.notified();
            if !state.paused.load(Ordering::SeqCst) {
                break;
            }
            n.await;
        }
    }

    /// Returns true when the stream must end.
    async fn handle_ctl(&self, c: Ctl) -> bool {
        match c {
            Ctl::Evict(reason) => {
                let data = serde_json::json!({"reason": reason});
                let last = self.last_cursor.clone();
                self.emit(signal("evicted", data, last)).await;
                true
            }
            Ctl::Invalidate(reason) => {
                let data = serde_json::json!({"reason": reason});
                !self.emit(signal("invalidate", data, None)).await
            }
            Ctl::Abort(status) => {
                let _ = self.out.send(vec![Err(status)]).await;
                true
            }
        }
    }
}

#[tonic::async_trait]
impl AdminCheckpointService for Svc {
    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::AdminCheckpoint>, Status> {
        require_admin(self.intercept(&request)?, "checkpoints")?;
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

    /// Stores the checkpoint; with a data directory it is on disk (fsynced) when this returns.
    async fn put_checkpoint(
        &self,
        request: Request<proto::PutCheckpointRequest>,
    ) -> Result<Response<proto::AdminCheckpoint>, Status> {
        require_admin(self.intercept(&request)?, "checkpoints")?;
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
        let stored = StoredCheckpoint {
            content_type: req.content_type.clone(),
            value: value_to_json(&value),
            updated_at: now,
        };
        self.state.store_checkpoint(&req.client_id, Some(stored));
        if let Some(p) = &self.state.persist {
            p.flush().await;
        }
        Ok(Response::new(proto::AdminCheckpoint {
            client_id: req.client_id,
            content_type: req.content_type,
            value: Some(value),
            updated_at: Some(system_to_timestamp(now)),
        }))
    }
}
