//! Frames on a QUIC stream: a 4-byte big-endian length, then that many
//! bytes (one command or one event). A stream has no message boundaries
//! of its own; the prefix gives it some, and lets a reader refuse an
//! oversized frame from its length alone, before holding any of it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes before each frame.
pub const PREFIX_LEN: usize = 4;

/// A frame whose announced length is over the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {announced} bytes was announced; the limit is {limit}")]
pub struct FrameTooLarge {
    pub announced: usize,
    pub limit: usize,
}

/// Appends `frame`, prefixed with its length, to `out`.
pub fn put_frame(out: &mut BytesMut, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("frames are far below 4 GiB");
    out.reserve(PREFIX_LEN + frame.len());
    out.put_u32(len);
    out.put_slice(frame);
}

/// Splits a stream's bytes into frames; holds at most one frame (and what
/// arrived after it).
#[derive(Debug)]
pub struct FrameReader {
    buffer: BytesMut,
    limit: usize,
}

impl FrameReader {
    /// Frames announced larger than `limit` are an error.
    pub fn new(limit: usize) -> FrameReader {
        FrameReader {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        if self.buffer.len() < PREFIX_LEN {
            return Ok(None);
        }
        let announced = u32::from_be_bytes(self.buffer[..PREFIX_LEN].try_into().expect("4 bytes")) as usize;
        if announced > self.limit {
            return Err(FrameTooLarge {
                announced,
                limit: self.limit,
            });
        }
        if self.buffer.len() < PREFIX_LEN + announced {
            // Room for the rest at once, not by doubling.
            self.buffer.reserve(PREFIX_LEN + announced - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(PREFIX_LEN);
        Ok(Some(self.buffer.split_to(announced).freeze()))
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let mut wire = BytesMut::new();
        let frames: Vec<Vec<u8>> = (0..50).map(|n| vec![n as u8; n * 7]).collect();
        for frame in &frames {
            put_frame(&mut wire, frame);
        }
        for step in [1, 3, 4, 5, 64, 1000] {
            let mut reader = FrameReader::new(1024);
            let mut out = Vec::new();
            for chunk in wire.chunks(step) {
                reader.extend(chunk);
                while let Some(frame) = reader.next_frame().unwrap() {
                    out.push(frame.to_vec());
                }
            }
            assert_eq!(out, frames, "chunks of {step}");
            assert_eq!(reader.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_prefix() {
        let mut reader = FrameReader::new(10);
        reader.extend(&11u32.to_be_bytes());
        assert_eq!(
            reader.next_frame(),
            Err(FrameTooLarge {
                announced: 11,
                limit: 10
            })
        );
        let mut reader = FrameReader::new(10);
        reader.extend(&10u32.to_be_bytes());
        assert_eq!(reader.next_frame(), Ok(None), "at the limit: waits for the bytes");
    }
}
