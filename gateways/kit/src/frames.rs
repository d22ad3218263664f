//! One command frame from a client, handled the same way on every
//! transport that carries commands.

use bytes::Bytes;
use herald_broker::{decode_command, Encoding, Reply, Session, SessionError};

use crate::reads::read_history_in_place;

/// Answers a frame over `max_frame_bytes` with `frame_too_large` (the
/// connection stays open); otherwise decodes it and hands the command to the
/// session, or answers why it could not be decoded.
pub fn handle_frame(session: &mut Session, encoding: Encoding, frame: Bytes, max_frame_bytes: usize) {
    if frame.len() > max_frame_bytes {
        session.outbox().push_reply(Reply::Error {
            id: None,
            code: "frame_too_large",
            message: format!("frame is {} bytes; the limit is {max_frame_bytes}", frame.len()),
        });
        return;
    }
    match decode_command(encoding, &frame) {
        Ok(command) => read_history_in_place(command.reads_wide_history(), || session.handle(command)),
        Err(error) => session.reject(error.id, &SessionError::Decode(error)),
    }
}
