//! One command frame from a client, handled the same way on every
//! transport that carries commands.

use bytes::Bytes;
use herald_broker::{decode_command, Authenticator, Command, Encoding, Reply, Session, SessionError};

use crate::reads::read_history_in_place;

/// What a frame did that the transport must know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Anything else: answered (or refused) through the outbox.
    Done,
    /// An `auth` or `refresh` replaced the connection's access: its expiry
    /// may have moved.
    AccessReplaced,
}

/// Answers a frame over `max_frame_bytes` with `frame_too_large` (the
/// connection stays open); otherwise decodes it and hands the command to the
/// session, or answers why it could not be decoded. `auth` and `refresh`
/// are verified here, with `auth`, which holds the server's keys.
pub fn handle_frame(
    session: &mut Session,
    encoding: Encoding,
    frame: Bytes,
    max_frame_bytes: usize,
    auth: &Authenticator,
) -> Handled {
    match decode_frame(session, encoding, &frame, max_frame_bytes) {
        Some(command) => handle_command(session, command, auth),
        None => Handled::Done,
    }
}

/// The first half of [`handle_frame`], for a transport that looks at a
/// command before the session does: the command, or `None` when the frame
/// was refused (too large, undecodable) and the client told why.
pub fn decode_frame(
    session: &Session,
    encoding: Encoding,
    frame: &Bytes,
    max_frame_bytes: usize,
) -> Option<Command> {
    if frame.len() > max_frame_bytes {
        session.count_command("invalid", Err("frame_too_large"));
        session.outbox().push_reply(Reply::Error {
            id: None,
            code: "frame_too_large",
            message: format!("frame is {} bytes; the limit is {max_frame_bytes}", frame.len()),
        });
        return None;
    }
    match decode_command(encoding, frame) {
        Ok(command) => Some(command),
        Err(error) => {
            let id = error.id;
            let error = SessionError::Decode(error);
            session.count_command("invalid", Err(error.code()));
            session.reject(id, &error);
            None
        }
    }
}

/// The second half of [`handle_frame`]: carries out a decoded command.
pub fn handle_command(session: &mut Session, command: Command, auth: &Authenticator) -> Handled {
    match command {
        Command::Auth { id, token } => replace_access(session, "auth", id, &token, auth),
        Command::Refresh { id, token } => replace_access(session, "refresh", id, &token, auth),
        command => {
            read_history_in_place(command.reads_wide_history(), || session.handle(command));
            Handled::Done
        }
    }
}

/// Verifies `token` and makes it the session's access, acknowledged; a
/// refused token is answered with its code and changes nothing.
fn replace_access(
    session: &mut Session,
    op: &str,
    id: Option<u64>,
    token: &str,
    auth: &Authenticator,
) -> Handled {
    let refused = |session: &Session, code, message: String| {
        session.count_command(op, Err(code));
        session.outbox().push_reply(Reply::Error { id, code, message });
        Handled::Done
    };
    let access = match auth.authenticate(Some(token)) {
        Ok(access) => access,
        Err(error) => return refused(session, error.code(), error.to_string()),
    };
    match session.replace_access(access) {
        Ok(()) => {
            session.count_command(op, Ok(()));
            if id.is_some() {
                session.outbox().push_reply(Reply::Ack { id, position: None });
            }
            Handled::AccessReplaced
        }
        Err(error) => refused(session, error.code(), error.to_string()),
    }
}
