//! Reading a JSON webhook payload into typed structs, with errors that name
//! the field at fault (`alerts[2].fingerprint`), shared by the GitHub and
//! Alertmanager receivers. Pure functions, no IO.

use serde::de::DeserializeOwned;

/// Why a payload was refused. The text names the field at fault, in the
/// payload's own spelling, so the sender's owner can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not well-formed JSON.
    #[error("the body is not JSON: {0}")]
    Syntax(String),
    /// A field is missing, has the wrong type, or holds a value that is not
    /// allowed (a commit id that is not hex).
    #[error("{}", display_field(field, reason))]
    Field {
        /// Where the problem is, e.g. `alerts[2].fingerprint`; the empty
        /// string for the whole body.
        field: String,
        /// What is wrong there.
        reason: String,
    },
}

fn display_field(field: &str, reason: &str) -> String {
    if field.is_empty() {
        format!("the body: {reason}")
    } else {
        format!("`{field}`: {reason}")
    }
}

impl PayloadError {
    /// Creates an error about `field` saying `reason`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> PayloadError {
        PayloadError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Deserializes `body`, a JSON object, as `T`. A syntax error comes first,
/// then a document that is not an object; otherwise the first typing problem
/// is returned at its path, a missing field at the path of the field itself
/// rather than of the object that lacks it.
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, PayloadError> {
    let value = crate::model::parse_json_unique(body).map_err(|error| match error {
        crate::model::JsonError::Syntax(error) => PayloadError::Syntax(error),
        crate::model::JsonError::DuplicateKey(path) => PayloadError::field(path, "duplicate key"),
    })?;
    if !value.is_object() {
        return Err(PayloadError::field(
            "",
            format!("expected a JSON object, found {}", kind(&value)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = format_path(error.path());
        let message = error.into_inner().to_string();
        match message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(field) => PayloadError::field(join(&path, field), "missing field"),
            None => PayloadError::field(path, message),
        }
    })
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Whether `text` is a commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
/// Commit ids are passed to the git command line, so nothing else is.
pub fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Whether `commit` is the all-zeros id GitHub sends for "no commit" (the
/// `before` of a new branch, the `after` of a deleted one).
pub fn is_zero_commit(commit: &str) -> bool {
    !commit.is_empty() && commit.bytes().all(|byte| byte == b'0')
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Formats a serde_path_to_error path as `alerts[2].fingerprint`.
fn format_path(path: &serde_path_to_error::Path) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            serde_path_to_error::Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => text = join(&text, key),
            serde_path_to_error::Segment::Unknown => text = join(&text, "?"),
        }
    }
    text
}

/// JSON edits of fixture payloads for the receivers' tests.
#[cfg(test)]
pub(crate) mod test_edits {
    /// `document` with the value at `pointer` replaced by `value`.
    pub(crate) fn edited(document: &str, pointer: &str, value: serde_json::Value) -> Vec<u8> {
        let mut document: serde_json::Value = serde_json::from_str(document).unwrap();
        *document.pointer_mut(pointer).unwrap() = value;
        serde_json::to_vec(&document).unwrap()
    }

    /// `document` without the field `field` of the object at `parent`.
    pub(crate) fn without(document: &str, parent: &str, field: &str) -> Vec<u8> {
        let mut document: serde_json::Value = serde_json::from_str(document).unwrap();
        let object = document
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap();
        object.remove(field).unwrap();
        serde_json::to_vec(&document).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        id: String,
        count: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let missing = from_json::<Outer>(br#"{"items": [{"id": "a", "count": 1}, {"id": "b"}]}"#);
        assert_eq!(
            missing.unwrap_err().to_string(),
            "`items[1].count`: missing field"
        );
        let wrong = from_json::<Outer>(br#"{"items": [{"id": 7, "count": 1}]}"#).unwrap_err();
        assert_eq!(
            wrong,
            PayloadError::field(
                "items[0].id",
                "invalid type: integer `7`, expected a string"
            )
        );
        assert!(matches!(
            from_json::<Outer>(b"{\"items\": ["),
            Err(PayloadError::Syntax(_))
        ));
        assert!(matches!(
            from_json::<Outer>(b"{\"items\": []} trailing"),
            Err(PayloadError::Syntax(_))
        ));
        assert_eq!(
            from_json::<Outer>(b"[1]").unwrap_err().to_string(),
            "the body: expected a JSON object, found an array"
        );
        assert_eq!(
            from_json::<Outer>(b"{}").unwrap_err().to_string(),
            "`items`: missing field"
        );
    }

    #[test]
    fn commit_ids_are_hex_of_the_right_length() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0123456789ABCDEF".repeat(4)));
        assert!(!is_commit_id(&"a".repeat(39)));
        assert!(!is_commit_id(&format!("--{}", "a".repeat(38))));
        assert!(!is_commit_id(&"g".repeat(40)));
        assert!(is_zero_commit(&"0".repeat(40)));
        assert!(!is_zero_commit(""));
    }
}
