//! The on-disk form of a segment: a header naming the window, then records of ids, each framed
//! with its length and a CRC32C, so that recovery tells a whole record from a torn one.
//!
//! ```text
//! header:  "VRVWAL01" (8 bytes) | window (u64 LE)
//! record:  payload length in bytes (u32 LE, a multiple of 8, never 0)
//!          | CRC32C of the length's bytes and the payload (u32 LE)
//!          | ids (i64 LE each)
//! ```
//!
//! A segment is allocated ahead and filled with zeros, so a zero length marks the end of what
//! was written.

use crate::window::WindowIndex;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"VRVWAL01";
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record's frame (length and CRC).
pub const FRAME_LEN: usize = 8;
/// Bytes of one id in a record.
pub const ID_LEN: usize = 8;

/// The header of the segment of `window`.
pub fn header(window: WindowIndex) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&window.to_le_bytes());
    header
}

/// Bytes a record of `ids` ids takes.
pub fn record_len(ids: usize) -> usize {
    FRAME_LEN + ids * ID_LEN
}

/// Writes the record of `ids` at the start of `out`, which holds at least `record_len` bytes.
/// The length is written last: a record whose length is there has its payload there too,
/// as far as a crash of the process goes (the CRC covers a torn write of the page cache).
pub fn encode(ids: &[i64], out: &mut [u8]) {
    let payload_len = ids.len() * ID_LEN;
    let (frame, payload) = out[..FRAME_LEN + payload_len].split_at_mut(FRAME_LEN);
    for (slot, id) in payload.chunks_exact_mut(ID_LEN).zip(ids) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
    let len = (payload_len as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    frame[4..].copy_from_slice(&crc.to_le_bytes());
    frame[..4].copy_from_slice(&len);
}

/// What reading a segment found.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The segment's window.
    pub window: WindowIndex,
    /// Every id of every whole record, in order.
    pub ids: Vec<i64>,
    /// Bytes from the segment's start through its last whole record.
    pub good_len: usize,
    /// Bytes past `good_len` that are not the zeros of unwritten space: a torn or corrupt tail.
    pub torn_len: usize,
}

/// Why a file is not a segment at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotASegment {
    #[error("no segment header")]
    /// Shorter than a header, or the header's magic is wrong.
    Header,
}

/// Reads a segment's records up to the first that is not whole (a zero length, a length past
/// the end, or a CRC that does not match).
pub fn decode(bytes: &[u8]) -> Result<Decoded, NotASegment> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(NotASegment::Header);
    }
    let window = u64::from_le_bytes(array(&bytes[8..]));
    let mut ids = Vec::new();
    let mut at = HEADER_LEN;
    while let Some(frame) = bytes.get(at..at + FRAME_LEN) {
        let len_bytes: [u8; 4] = array(frame);
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(array(&frame[4..]));
        let Some(payload) = bytes.get(at + FRAME_LEN..at + FRAME_LEN + len) else {
            break;
        };
        if len == 0
            || !len.is_multiple_of(ID_LEN)
            || crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != crc
        {
            break;
        }
        ids.extend(
            payload
                .chunks_exact(ID_LEN)
                .map(|id| i64::from_le_bytes(array(id))),
        );
        at += FRAME_LEN + len;
    }
    let written = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    Ok(Decoded {
        window,
        ids,
        good_len: at,
        torn_len: written.saturating_sub(at),
    })
}

/// The first `N` bytes of `bytes`, which holds at least that many.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    std::array::from_fn(|i| bytes[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of `window` holding `records`, followed by `spare` zero bytes.
    fn segment(window: WindowIndex, records: &[&[i64]], spare: usize) -> Vec<u8> {
        let mut bytes = header(window).to_vec();
        for ids in records {
            let at = bytes.len();
            bytes.resize(at + record_len(ids.len()), 0);
            encode(ids, &mut bytes[at..]);
        }
        bytes.resize(bytes.len() + spare, 0);
        bytes
    }

    #[test]
    fn records_read_back_in_order_up_to_the_unwritten_zeros() {
        let bytes = segment(7, &[&[1, -2, i64::MAX], &[i64::MIN]], 64);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.window, 7);
        assert_eq!(decoded.ids, [1, -2, i64::MAX, i64::MIN]);
        assert_eq!(decoded.good_len, bytes.len() - 64);
        assert_eq!(decoded.torn_len, 0);
    }

    #[test]
    fn a_record_cut_anywhere_keeps_every_whole_record_before_it() {
        // Negative ids: no zero byte at their end, so that any cut shortens the record.
        let whole = segment(3, &[&[-10, -11], &[-12, -13, -14]], 0);
        let first_end = HEADER_LEN + record_len(2);
        for cut in first_end + 1..whole.len() {
            // The cut record's bytes are there up to `cut`, zeros after (unwritten space).
            let mut bytes = whole[..cut].to_vec();
            bytes.resize(whole.len() + 16, 0);
            let decoded = decode(&bytes).unwrap();
            assert_eq!(decoded.ids, [-10, -11], "cut at {cut}");
            assert_eq!(decoded.good_len, first_end, "cut at {cut}");
            let nonzero_tail = whole[first_end..cut].iter().rposition(|&b| b != 0);
            assert_eq!(
                decoded.torn_len,
                nonzero_tail.map_or(0, |p| p + 1),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_segment_at_the_record_before() {
        let mut bytes = segment(3, &[&[10], &[-20], &[-30]], 8);
        let second_payload = HEADER_LEN + record_len(1) + FRAME_LEN;
        bytes[second_payload] ^= 0x04;
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.ids, [10]);
        assert_eq!(decoded.good_len, HEADER_LEN + record_len(1));
        assert_eq!(decoded.torn_len, 2 * record_len(1));
    }

    #[test]
    fn a_file_without_the_header_is_not_a_segment() {
        assert_eq!(decode(b"VRVWAL0"), Err(NotASegment::Header));
        assert_eq!(decode(&[0; 64]), Err(NotASegment::Header));
    }
}
