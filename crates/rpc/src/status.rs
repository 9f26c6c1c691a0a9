//! What is read from a status, or rewritten in one, by rule rather than by code: the only
//! places that read the text of hyper's or tonic's errors, so an upgrade is checked here once.

use tonic::Code;

use crate::limits::MAX_DECODE_BYTES;

/// Whether a transport failure happened before the request was sent: the connection could
/// not be made (refused, found in the error's source chain, or hyper's connector failed),
/// hyper dropped the request from its queue because the connection closed first (its
/// "operation was canceled", which hyper produces only for requests it never sent), or the
/// server refused the stream before processing it (a remote `REFUSED_STREAM` reset or
/// GOAWAY, RFC 9113 §8.7: as a node past its connection limit answers, `rpc::server`).
#[must_use]
pub fn never_sent(status: &tonic::Status) -> bool {
    const HYPER_CANCELED: &str = "operation was canceled";
    let refused = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    match status.code() {
        Code::Unavailable => {
            if status.message().starts_with("tcp connect error") {
                return true;
            }
            let mut source = std::error::Error::source(status);
            while let Some(e) = source {
                if refused(e) || refused_stream(e).is_some() {
                    return true;
                }
                source = e.source();
            }
            false
        }
        Code::Cancelled => status.message().starts_with(HYPER_CANCELED),
        _ => false,
    }
}

/// The remote `REFUSED_STREAM` error (a reset or a GOAWAY) `e` is, if it is one.
fn refused_stream<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    e.downcast_ref::<h2::Error>().filter(|h2| h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// What the server said when it refused the stream before processing it (h2's text of the
/// reset or GOAWAY, with its debug data), from a status's source chain; `None` when it did
/// not. tonic's own message for such a status says only "h2 protocol error: http2 error".
#[must_use]
pub fn refusal(status: &tonic::Status) -> Option<String> {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h2) = refused_stream(e) {
            return Some(h2.to_string());
        }
        source = e.source();
    }
    None
}

/// Rewrites tonic's answer to a message over [`MAX_DECODE_BYTES`] (`OUT_OF_RANGE`, "decoded
/// message length too large: found N bytes, the limit is: M bytes") into the
/// `INVALID_ARGUMENT` every other limit answers, naming the limit. Other statuses pass.
#[must_use]
pub fn decode_limit_status(code: Code, message: &str) -> Option<(Code, String)> {
    if code != Code::OutOfRange || !message.contains("decoded message length too large") {
        return None;
    }
    let found = message.split("found ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?");
    Some((
        Code::InvalidArgument,
        format!("message is {found} bytes; the gRPC limit (MAX_DECODE_BYTES) is {MAX_DECODE_BYTES} bytes"),
    ))
}

/// The message an `UNIMPLEMENTED` answer without one gets at the server's edge: tonic answers
/// a call to an unknown service or method with an empty message.
pub const UNKNOWN_METHOD_MESSAGE: &str = "unknown service or method: check the call's path (/package.Service/Method) against the proto files of this server's version; on the client port, gRPC reflection lists what it serves (grpcurl -plaintext HOST:PORT list)";

/// Rewords tonic's answer to an unknown service or method (`UNIMPLEMENTED` with an empty
/// message) into one that says what to check. Other statuses, and `UNIMPLEMENTED` answers
/// that already say something (an unsupported compression), pass.
#[must_use]
pub fn unknown_method_status(code: Code, message: &str) -> Option<(Code, String)> {
    (code == Code::Unimplemented && message.is_empty()).then(|| (code, UNKNOWN_METHOD_MESSAGE.to_string()))
}

/// Whether a connection error's text (with its sources, as [`error_chain`] gives it) says
/// the server's certificate failed this client's verification (unknown CA, expired, not
/// valid for the name dialled): trying the same server again cannot succeed.
#[must_use]
pub fn certificate_refused(error: &str) -> bool {
    error.contains("invalid peer certificate")
}

/// `e` and every error in its source chain, joined by `: ` (tonic's transport error says
/// only "transport error"; the reason, such as a refused TLS certificate, is in its
/// sources). A source whose text the previous one already holds is skipped.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
