//! W3C Trace Context: the `traceparent` header sent on each upstream call
//! when the route has tracing on (`traceparent = true`).
//!
//! The trace id is the batch's id (a request without a batch uses its own
//! id), so every call of one batch, retries included, lands in one trace on
//! the model server's side; each attempt is a fresh span (random span id).
//! The header is `00-<32 hex trace id>-<16 hex span id>-01` (version 00,
//! sampled).

use uuid::Uuid;

/// The `traceparent` value for one attempt of a call belonging to `trace`.
pub fn traceparent(trace: Uuid) -> String {
    format!("00-{}-{}-01", trace_id(trace), span_id())
}

/// 32 lowercase hex digits; never all zeros (which the spec forbids).
fn trace_id(trace: Uuid) -> String {
    if trace.is_nil() {
        return format!("{:032x}", Uuid::new_v4().as_u128());
    }
    format!("{:032x}", trace.as_u128())
}

/// 16 lowercase hex digits from fresh random bits; never all zeros.
fn span_id() -> String {
    loop {
        let bits = Uuid::new_v4().as_u64_pair().1;
        if bits != 0 {
            return format!("{bits:016x}");
        }
    }
}

/// Whether `v` is a well-formed version-00 `traceparent` (for tests and the
/// mock): four dash-separated lowercase hex fields of 2, 32, 16 and 2
/// digits, with non-zero trace and span ids.
pub fn is_well_formed(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trace_per_batch_and_one_span_per_attempt() {
        let batch = Uuid::now_v7();
        let (a, b) = (traceparent(batch), traceparent(batch));
        assert!(is_well_formed(&a), "{a}");
        assert_eq!(a[3..35], b[3..35], "same trace id");
        assert_ne!(a[36..52], b[36..52], "a fresh span per attempt");
        assert_eq!(&a[3..35], batch.simple().to_string());
        assert!(is_well_formed(&traceparent(Uuid::nil())));
    }

    #[test]
    fn malformed_values_are_told_apart() {
        let zero_trace = format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16));
        for bad in [
            "",
            "00-abc-def-01",
            zero_trace.as_str(),
            "00-0123456789ABCDEF0123456789abcdef-0123456789abcdef-01",
            "01-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
