//! Single-input embeddings lines packed into one call.
//!
//! `/v1/embeddings` takes `input` as an array, so lines of the same model
//! and parameters whose `input` is one string go out together, and the
//! answer is split back by `index` into a complete embeddings answer per
//! line, the call's usage shared out so the lines' totals equal it.

use serde_json::{Map, Value};

/// A line that can share a call: the body without `input` (what its
/// partners must match exactly), and its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Packable {
    /// The other fields, as JSON text.
    pub params: String,
    /// The one input.
    pub input: String,
}

/// The line's part in a pack, when it is a single-string embeddings line.
pub(super) fn packable(path: &str, body: &str) -> Option<Packable> {
    if !path.trim_end_matches('/').ends_with("/embeddings") {
        return None;
    }
    let mut map: Map<String, Value> = serde_json::from_str(body).ok()?;
    let Some(Value::String(input)) = map.remove("input") else {
        return None;
    };
    Some(Packable {
        params: Value::Object(map).to_string(),
        input,
    })
}

/// The body of the packed call.
pub(super) fn packed_body(params: &str, inputs: &[&str]) -> String {
    let mut map: Map<String, Value> = serde_json::from_str(params).unwrap_or_default();
    map.insert(
        "input".into(),
        Value::Array(
            inputs
                .iter()
                .map(|i| Value::String((*i).to_owned()))
                .collect(),
        ),
    );
    Value::Object(map).to_string()
}

/// The packed answer split into one answer per input (in input order), or
/// `None` when it does not hold exactly one embedding per input. Usage is
/// shared out by input length, the rounding left to the last line.
pub(super) fn split(answer: &[u8], inputs: &[&str]) -> Option<Vec<Vec<u8>>> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    let data = v.get("data")?.as_array()?;
    if data.len() != inputs.len() {
        return None;
    }
    let mut by_index: Vec<Option<&Value>> = vec![None; inputs.len()];
    for item in data {
        let i = usize::try_from(item.get("index")?.as_u64()?).ok()?;
        if by_index.get(i)?.is_some() {
            return None;
        }
        by_index[i] = Some(item);
    }
    let usage = v.get("usage");
    let total_of = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let prompt = total_of("prompt_tokens");
    let total = total_of("total_tokens");
    let weights: Vec<u64> = inputs.iter().map(|i| i.len().max(1) as u64).collect();
    let prompt_shares = prompt.map(|t| shares(t, &weights));
    let total_shares = total.map(|t| shares(t, &weights));
    let mut out = Vec::with_capacity(inputs.len());
    for (i, item) in by_index.into_iter().enumerate() {
        let mut item = item?.clone();
        item["index"] = Value::from(0);
        let mut one = Map::new();
        one.insert("object".into(), Value::from("list"));
        one.insert("data".into(), Value::Array(vec![item]));
        if let Some(model) = v.get("model") {
            one.insert("model".into(), model.clone());
        }
        let mut u = Map::new();
        if let Some(s) = &prompt_shares {
            u.insert("prompt_tokens".into(), Value::from(s[i]));
        }
        if let Some(s) = &total_shares {
            u.insert("total_tokens".into(), Value::from(s[i]));
        }
        if usage.is_some() {
            one.insert("usage".into(), Value::Object(u));
        }
        out.push(Value::Object(one).to_string().into_bytes());
    }
    Some(out)
}

/// `total` shared in proportion to `weights`; the shares add up to `total`.
fn shares(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum::<u64>().max(1);
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| (u128::from(total) * u128::from(*w) / u128::from(sum)) as u64)
        .collect();
    let given: u64 = out.iter().sum();
    if let Some(last) = out.last_mut() {
        *last += total - given;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_single_string_embeddings_lines_pack() {
        let p = packable(
            "/v1/embeddings",
            r#"{"model":"e","input":"hi","dimensions":8}"#,
        )
        .unwrap();
        assert_eq!(p.input, "hi");
        assert_eq!(p.params, r#"{"dimensions":8,"model":"e"}"#);
        assert!(packable("/v1/embeddings", r#"{"model":"e","input":["a","b"]}"#).is_none());
        assert!(packable("/v1/chat/completions", r#"{"model":"e","input":"x"}"#).is_none());
        let body: Value = serde_json::from_str(&packed_body(&p.params, &["a", "b"])).unwrap();
        assert_eq!(
            body,
            json!({"model": "e", "dimensions": 8, "input": ["a", "b"]})
        );
    }

    #[test]
    fn an_answer_splits_by_index_and_usage_adds_up() {
        let answer = json!({"object": "list", "model": "e", "data": [
            {"object": "embedding", "index": 1, "embedding": [2.0]},
            {"object": "embedding", "index": 0, "embedding": [1.0]},
            {"object": "embedding", "index": 2, "embedding": [3.0]}],
            "usage": {"prompt_tokens": 10, "total_tokens": 10}});
        let parts = split(answer.to_string().as_bytes(), &["aa", "b", "cccc"]).unwrap();
        let parts: Vec<Value> = parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p["data"][0]["embedding"][0], json!(i as f64 + 1.0));
            assert_eq!(p["data"][0]["index"], 0);
            assert_eq!(p["model"], "e");
        }
        let sum: u64 = parts
            .iter()
            .map(|p| p["usage"]["total_tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, 10);
    }

    #[test]
    fn an_answer_of_another_size_does_not_split() {
        let answer = json!({"data": [{"index": 0, "embedding": [1.0]}]});
        assert!(split(answer.to_string().as_bytes(), &["a", "b"]).is_none());
        let twice = json!({"data": [{"index": 0}, {"index": 0}]});
        assert!(split(twice.to_string().as_bytes(), &["a", "b"]).is_none());
    }
}
