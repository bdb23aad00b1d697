//! The hole list of a stored file part, one format for every backend: an
//! input file is stored as parts with the bodies of its templates cut out
//! (each body is kept once, in its template), and each part lists, for each
//! body removed, where it goes back in the part's data and its line number.

use super::StoreError;
use crate::domain::file::FileId;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use tokio::sync::mpsc;

/// Bytes handed to a download at a time.
const DOWNLOAD_CHUNK: usize = 256 << 10;

/// Bytes of one entry: the offset in the part's data (u32) and the line
/// number (u64), both big-endian.
const HOLE_BYTES: usize = 12;

/// Appends the entry for a body cut out at `at` of the part's data.
pub(super) fn push_hole(holes: &mut Vec<u8>, at: usize, line: u64) {
    let at = u32::try_from(at).expect("a part is under 4 GiB");
    holes.extend_from_slice(&at.to_be_bytes());
    holes.extend_from_slice(&line.to_be_bytes());
}

/// The entries of a stored hole list, as (offset in its data, line number).
pub(super) fn decode_holes(holes: &[u8]) -> Result<Vec<(usize, i64)>, StoreError> {
    if !holes.len().is_multiple_of(HOLE_BYTES) {
        return Err(StoreError::Invalid(format!(
            "a file part's hole list is {} bytes long",
            holes.len()
        )));
    }
    Ok(holes
        .chunks_exact(HOLE_BYTES)
        .map(|h| {
            let at = u32::from_be_bytes(h[..4].try_into().expect("4 bytes"));
            let line = u64::from_be_bytes(h[4..].try_into().expect("8 bytes"));
            (at as usize, line as i64)
        })
        .collect())
}

/// The error for a hole whose template (its body) is not there.
pub(super) fn missing_body(id: FileId, line: i64) -> StoreError {
    StoreError::Invalid(format!(
        "file {id}: the template of line {line}, which holds part of the file, is missing"
    ))
}

/// Sends one stored part of input file `id` down `out`: its `data` with
/// each hole of its hole list filled by its line's body. `bodies(first,
/// last)` reads the bodies of the templates of lines `first..=last` in line
/// order, as (line, body); a template in the range whose body was not cut
/// out (a suspected duplicate) is passed over. Returns whether the reader is
/// still there.
pub(super) async fn send_part<F, B>(
    id: FileId,
    data: Vec<u8>,
    holes: Option<&[u8]>,
    bodies: F,
    out: &mpsc::Sender<Result<Bytes, StoreError>>,
) -> Result<bool, StoreError>
where
    F: FnOnce(i64, i64) -> B,
    B: Stream<Item = Result<(i64, String), StoreError>>,
{
    let holes = decode_holes(holes.unwrap_or_default())?;
    let (Some(&(_, first)), Some(&(_, last))) = (holes.first(), holes.last()) else {
        return Ok(out.send(Ok(Bytes::from(data))).await.is_ok());
    };
    // A part is written with the templates of its segment, so its bodies
    // are about a segment's bytes at most.
    let mut bodies = Box::pin(bodies(first, last));
    let mut buf = Vec::with_capacity(DOWNLOAD_CHUNK);
    let mut from = 0;
    for (at, line) in holes {
        let body = loop {
            let (n, body) = bodies
                .try_next()
                .await?
                .ok_or_else(|| missing_body(id, line))?;
            if n == line {
                break body;
            }
            if n > line {
                return Err(missing_body(id, line));
            }
        };
        let gap = data.get(from..at).ok_or_else(|| {
            StoreError::Invalid(format!("file {id}: a part's hole at {at} is out of order"))
        })?;
        buf.extend_from_slice(gap);
        buf.extend_from_slice(body.as_bytes());
        from = at;
        if buf.len() >= DOWNLOAD_CHUNK {
            let chunk = std::mem::replace(&mut buf, Vec::with_capacity(DOWNLOAD_CHUNK));
            if out.send(Ok(Bytes::from(chunk))).await.is_err() {
                return Ok(false);
            }
        }
    }
    // The query's connection goes back before the wait for a slow reader.
    drop(bodies);
    buf.extend_from_slice(&data[from..]);
    Ok(out.send(Ok(Bytes::from(buf))).await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_read_back_as_written_and_a_torn_list_is_refused() {
        let mut holes = Vec::new();
        push_hole(&mut holes, 0, 1);
        push_hole(&mut holes, 70_000, 5_000_000_000);
        assert_eq!(
            decode_holes(&holes).unwrap(),
            [(0, 1), (70_000, 5_000_000_000)]
        );
        assert!(decode_holes(&holes[..13]).is_err());
    }
}
