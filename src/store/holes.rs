//! The hole list of a stored file part, one format for every backend: an
//! input file is stored as parts with the bodies of its templates cut out
//! (each body is kept once, in its template), and each part lists, for each
//! body removed, where it goes back in the part's data and its line number.

use super::StoreError;
use crate::domain::file::FileId;

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
