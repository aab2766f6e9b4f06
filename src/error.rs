//! Errors of the core, and how gRPC status codes are classified (transient vs fatal).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// An error carried through the core. `Clone` because the same fatal error may be reported both
/// to the loop and to whoever awaits the runtime.
#[derive(Clone, thiserror::Error)]
pub enum Error {
    /// The stored checkpoint belongs to another processor (or another version of it).
    #[error("checkpoint content type mismatch: got {got:?}, want {want:?}")]
    ContentTypeMismatch { got: String, want: String },
    /// The resume position is outside the server's retention window and the policy is `fail`.
    #[error("stale cursor {cursor:?}: {reason}")]
    StaleCursor {
        cursor: Option<String>,
        reason: String,
    },
    /// A status the server will give again if asked again (auth, bad request, unimplemented...).
    #[error("{method}: server answered {code}: {message}")]
    ServerStatus {
        method: String,
        code: String,
        message: String,
    },
    /// The client could not decode what the server sent (a string field that is not UTF-8, a
    /// malformed message): asking again would only get the same bytes, so it is never retried.
    #[error("{method}: {message}")]
    Undecodable { method: String, message: String },
    /// Trouble that a retry with backoff may cure (server down, rate limited, internal error).
    #[error("{0}")]
    Transient(String),
    /// No checkpoint is stored for the client id (a first run).
    #[error("checkpoint not found for client id {0:?}")]
    CheckpointNotFound(String),
    /// Bad configuration or input, found before or while talking to the server.
    #[error("{0}")]
    Config(String),
    /// Something the processor side reported (a checkpoint that cannot be encoded, ...).
    #[error("{0}")]
    Invalid(String),
    /// An error from a foreign client (e.g. a Python object); the payload is handed back
    /// unchanged to the caller that can interpret it.
    #[error("{message}")]
    External {
        message: String,
        transient: bool,
        payload: Arc<dyn Any + Send + Sync>,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// True when a retry with backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transient(_) => true,
            Error::External { transient, .. } => *transient,
            _ => false,
        }
    }

    /// True for a transient failure of the HTTP/2 layer itself (`h2 protocol error`): retried,
    /// but only a few times in a row (a status over the header limit never heals).
    pub fn is_protocol_failure(&self) -> bool {
        match self {
            Error::Transient(m) => m.contains("h2 protocol error"),
            _ => false,
        }
    }

    /// Classifies a gRPC status returned by `method` following the wire contract's table.
    pub fn from_status(method: &str, status: &tonic::Status) -> Error {
        Self::from_status_redacted(method, status, &[])
    }

    /// [`Error::from_status`], with every occurrence of each of `secrets` (the client's own API
    /// key and bearer token) replaced in the server's message first: a server that echoes them
    /// must not put them into an exception or a log line.
    pub fn from_status_redacted(method: &str, status: &tonic::Status, secrets: &[&str]) -> Error {
        let code = code_name(status.code());
        let message = redact(status.message(), secrets);
        if message.contains("failed to decode Protobuf message") {
            return Error::Undecodable {
                method: method.to_string(),
                message: format!("the client cannot decode the server's message: {message}"),
            };
        }
        if is_tls_rejection(&message) {
            // A certificate the client does not trust will not become trusted by retrying.
            return Error::ServerStatus {
                method: method.to_string(),
                code: code.to_string(),
                message: format!(
                    "TLS handshake failed ({message}); check tls_ca_file / tls_server_name"
                ),
            };
        }
        if message.contains("message length too large") {
            return Error::ServerStatus {
                method: method.to_string(),
                code: code.to_string(),
                message: format!("{message} (raise the client's max_message_size to accept it)"),
            };
        }
        if is_transient_code(status.code()) {
            let message = if message.is_empty() {
                String::from("(no message)")
            } else {
                message
            };
            Error::Transient(format!("{method}: server answered {code}: {message}"))
        } else {
            Error::ServerStatus {
                method: method.to_string(),
                code: code.to_string(),
                message,
            }
        }
    }
}

/// Secrets shorter than this are not searched for (replacing every `a` would garble the message
/// and protect little).
const MIN_REDACTED_LEN: usize = 4;

/// `message` with each of `secrets` replaced by `<redacted>`.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets {
        if s.len() >= MIN_REDACTED_LEN && out.contains(s) {
            out = out.replace(s, "<redacted>");
        }
    }
    out
}

/// rustls' words for a server certificate the client refuses.
fn is_tls_rejection(message: &str) -> bool {
    message.contains("invalid peer certificate")
}

/// Codes that a retry with backoff may cure (docs/semantics.md, section 8).
pub fn is_transient_code(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | ResourceExhausted
            | Internal
            | Unknown
            | DeadlineExceeded
            | Aborted
            | Cancelled
    )
}

/// The canonical upper-case gRPC name of a status code (`UNAVAILABLE`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Parses a code name as written by [`code_name`] (case-insensitive).
pub fn code_from_name(name: &str) -> Option<tonic::Code> {
    use tonic::Code::*;
    let all = [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ];
    all.into_iter()
        .find(|c| code_name(*c).eq_ignore_ascii_case(name.trim()))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_like_the_wire_contract() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::ResourceExhausted,
            tonic::Code::Internal,
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Aborted,
        ] {
            assert!(Error::from_status("m", &tonic::Status::new(code, "x")).is_transient());
        }
        for code in [
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::Unimplemented,
        ] {
            let e = Error::from_status("SubscribeEvents", &tonic::Status::new(code, "nope"));
            assert!(!e.is_transient());
            let text = e.to_string();
            assert!(text.contains(code_name(code)), "{text}");
            assert!(text.contains("nope"), "{text}");
        }
    }

    #[test]
    fn an_untrusted_certificate_is_fatal() {
        let s = tonic::Status::unavailable("invalid peer certificate: UnknownIssuer");
        let e = Error::from_status("GetCheckpoint", &s);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("tls_ca_file"), "{e}");
    }

    #[test]
    fn an_undecodable_message_is_not_retried() {
        let s = tonic::Status::internal(
            "failed to decode Protobuf message: EventNotification.kind: invalid string value: data is not UTF-8 encoded",
        );
        let e = Error::from_status("SubscribeEvents", &s);
        assert!(matches!(e, Error::Undecodable { .. }), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn h2_protocol_failures_are_transient_but_recognized() {
        let s = tonic::Status::internal("h2 protocol error: error reading a body from connection");
        let e = Error::from_status("SubscribeEvents", &s);
        assert!(e.is_transient() && e.is_protocol_failure(), "{e}");
        let other = Error::from_status("SubscribeEvents", &tonic::Status::unavailable("down"));
        assert!(!other.is_protocol_failure());
    }

    #[test]
    fn echoed_secrets_are_redacted() {
        let s = tonic::Status::unauthenticated("bad key sekrit-key-123 (Bearer tok-456789)");
        let e = Error::from_status_redacted("GetCheckpoint", &s, &["sekrit-key-123", "tok-456789"]);
        let text = e.to_string();
        assert!(
            !text.contains("sekrit") && !text.contains("tok-456789"),
            "{text}"
        );
        assert!(text.contains("<redacted>"), "{text}");
        let t = Error::from_status_redacted(
            "m",
            &tonic::Status::unavailable("x sekrit-key-123"),
            &["sekrit-key-123"],
        );
        assert!(!t.to_string().contains("sekrit"), "{t}");
    }

    #[test]
    fn code_names_round_trip() {
        assert_eq!(
            code_from_name("unavailable"),
            Some(tonic::Code::Unavailable)
        );
        assert_eq!(
            code_from_name("PERMISSION_DENIED"),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(code_from_name("bogus"), None);
    }
}
