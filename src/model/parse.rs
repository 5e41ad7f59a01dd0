//! Parsing a manifest from YAML or JSON bytes, with errors that name a place.
//!
//! Parsing runs in three steps, and each step reports every problem it can
//! see instead of stopping at the first one:
//!
//! 1. Syntax: the bytes become a `serde_json::Value`. A syntax error names the
//!    line and column where the document broke.
//! 2. Typing: the value becomes a [`Manifest`]. Every unknown field is
//!    reported by its path (`spec.pools[0].replica`), and a value of the wrong
//!    type is reported by its path too (`spec.pools[0].replicas`).
//! 3. Validation: [`validate`] checks the rules that types cannot express.
//!
//! Paths use the manifest's own camelCase names, joined with `.` for fields
//! and `[i]` for list elements, so a user can find the place in their file.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::manifest::Manifest;
use super::validate::validate;

/// The surface syntax of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// YAML 1.2, as users usually write manifests. Exactly one document.
    Yaml,
    /// JSON, as the HTTP API and the `exec` plugins exchange them.
    Json,
}

/// One problem with one field of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is, e.g. `spec.network.subnets[1].cidr`. The empty
    /// string stands for the whole document.
    pub path: String,
    /// What is wrong there, in words meant for the person who wrote it.
    pub reason: String,
}

impl FieldError {
    /// Creates an error at `path` saying `reason`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not well-formed YAML or JSON (or not UTF-8 at all).
    #[error("{}", display_syntax(message, *line, *column))]
    Syntax {
        /// What the parser found wrong, without the location.
        message: String,
        /// The 1-based line where the document broke, when known.
        line: Option<usize>,
        /// The 1-based column where the document broke, when known.
        column: Option<usize>,
    },
    /// The document is well-formed but is not a valid Cluster manifest. Holds
    /// every problem found by the step that failed: unknown fields (in
    /// alphabetical order of keys within each mapping, as serde_json keeps
    /// them) then a type error, or else every validation error.
    #[error("{}", display_invalid(.0))]
    Invalid(Vec<FieldError>),
}

fn display_syntax(message: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => {
            format!("syntax error at line {line}, column {column}: {message}")
        }
        (Some(line), None) => format!("syntax error at line {line}: {message}"),
        _ => format!("syntax error: {message}"),
    }
}

fn display_invalid(errors: &[FieldError]) -> String {
    let mut text = match errors.len() {
        1 => "invalid manifest, 1 error:".to_string(),
        n => format!("invalid manifest, {n} errors:"),
    };
    for error in errors {
        text.push_str("\n  ");
        text.push_str(&error.to_string());
    }
    text
}

/// Parses, validates and normalizes a manifest.
///
/// On success the manifest has passed [`validate`] and has been normalized
/// (see [`Manifest::normalize`]), so it can go straight to `diff`.
///
/// Unknown fields are reported together with every validation error. A type
/// error (a string where a number belongs) stops deserialization, so it is
/// reported with the unknown fields met before it (keys are visited in
/// alphabetical order within each mapping), and validation runs only on a
/// manifest that typed cleanly.
pub fn parse_manifest(bytes: &[u8], format: ManifestFormat) -> Result<Manifest, ManifestError> {
    let value = parse_syntax(bytes, format)?;
    let Some(mut value) = value else {
        return Err(ManifestError::Invalid(vec![FieldError::new(
            "",
            "expected a mapping, found an empty document",
        )]));
    };
    if !value.is_object() {
        return Err(ManifestError::Invalid(vec![FieldError::new(
            "",
            format!("expected a mapping, found {}", describe_value(&value)),
        )]));
    }
    stringify_numbers(&mut value);

    let (mut manifest, mut errors) = parse_typed(value)?;
    errors.extend(validate(&manifest));
    if !errors.is_empty() {
        return Err(ManifestError::Invalid(errors));
    }
    manifest.normalize();
    Ok(manifest)
}

/// The syntax step: bytes to a JSON value, or `None` for an empty document.
fn parse_syntax(bytes: &[u8], format: ManifestFormat) -> Result<Option<Value>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let offset = error.valid_up_to();
        let (line, column) = line_and_column(&bytes[..offset]);
        ManifestError::Syntax {
            message: format!("invalid UTF-8 at byte offset {offset}"),
            line: Some(line),
            column: Some(column),
        }
    })?;
    match format {
        ManifestFormat::Json => {
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            if text.trim().is_empty() {
                return Ok(None);
            }
            serde_json::from_str::<Value>(text)
                .map(Some)
                .map_err(|error| {
                    let (line, column) = (error.line(), error.column());
                    let message = strip_location(&error.to_string(), line, column);
                    ManifestError::Syntax {
                        message,
                        line: (line > 0).then_some(line),
                        column: (line > 0).then_some(column),
                    }
                })
        }
        ManifestFormat::Yaml => {
            let yaml_error = |error: serde_norway::Error| {
                let location = error.location();
                let message = match &location {
                    Some(location) => {
                        strip_location(&error.to_string(), location.line(), location.column())
                    }
                    None => error.to_string(),
                };
                ManifestError::Syntax {
                    message,
                    line: location.as_ref().map(|location| location.line()),
                    column: location.as_ref().map(|location| location.column()),
                }
            };
            let mut documents = serde_norway::Deserializer::from_str(text);
            let Some(document) = documents.next() else {
                return Ok(None);
            };
            let value = Value::deserialize(document).map_err(yaml_error)?;
            if documents.next().is_some() {
                return Err(ManifestError::Syntax {
                    message: "expected one YAML document, found more than one".to_string(),
                    line: None,
                    column: None,
                });
            }
            Ok(if value.is_null() { None } else { Some(value) })
        }
    }
}

/// Removes the " at line L column C" that serde_json and serde_norway put in
/// their messages, since the location is reported separately. Other locations
/// stay, such as libyaml's "while parsing a flow sequence at line 3 column 18".
fn strip_location(message: &str, line: usize, column: usize) -> String {
    message.replacen(&format!(" at line {line} column {column}"), "", 1)
}

/// The 1-based line and column just after `prefix`, counting columns in bytes.
fn line_and_column(prefix: &[u8]) -> (usize, usize) {
    let line = 1 + prefix.iter().filter(|&&byte| byte == b'\n').count();
    let line_start = prefix
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    (line, prefix.len() - line_start + 1)
}

fn describe_value(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Turns the numbers that YAML users write unquoted into the strings the types
/// expect: `spec.kubernetesVersion` (`1.31` is a float to YAML) and
/// `spec.firewall[i].ports` (`ports: 443`).
///
/// A float keeps serde_json's rendering, so `1.30` becomes `"1.3"`; validation
/// then rejects it as not a semantic version, which is what the user needs to
/// hear anyway.
fn stringify_numbers(document: &mut Value) {
    let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(version) = spec.get_mut("kubernetesVersion") {
        stringify_number(version);
    }
    if let Some(rules) = spec.get_mut("firewall").and_then(Value::as_array_mut) {
        for rule in rules {
            if let Some(ports) = rule.get_mut("ports") {
                stringify_number(ports);
            }
        }
    }
}

fn stringify_number(value: &mut Value) {
    if let Value::Number(number) = value {
        *value = Value::String(number.to_string());
    }
}

/// The typing step: a JSON value to a [`Manifest`], collecting every unknown
/// field and the first type error.
/// The typing step. On success, returns the manifest with the unknown fields
/// met on the way, so that they are reported together with validation errors.
fn parse_typed(value: Value) -> Result<(Manifest, Vec<FieldError>), ManifestError> {
    let mut errors = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| {
        errors.push(FieldError::new(ignored_path(&path), "unknown field"));
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let typed: Result<Manifest, _> = serde_path_to_error::deserialize(deserializer);
    match typed {
        Ok(manifest) => Ok((manifest, errors)),
        Err(error) => {
            errors.push(type_error(&error));
            Err(ManifestError::Invalid(errors))
        }
    }
}

/// Converts a typing error into a field error. A missing field is reported at
/// the path of the field itself rather than at the mapping that lacks it.
fn type_error(error: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = typed_path(error.path());
    let message = error.inner().to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match missing {
        Some(field) => FieldError::new(join_field(&path, field), "missing field"),
        None => FieldError::new(path, message),
    }
}

/// Formats a serde_path_to_error path as `spec.pools[0].replicas`.
fn typed_path(path: &serde_path_to_error::Path) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                text.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                text = join_field(&text, key);
            }
            serde_path_to_error::Segment::Unknown => text = join_field(&text, "?"),
        }
    }
    text
}

/// Formats a serde_ignored path as `spec.pools[0].replicas`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    match path {
        serde_ignored::Path::Root => String::new(),
        serde_ignored::Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        serde_ignored::Path::Map { parent, key } => join_field(&ignored_path(parent), key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Appends a field name to a path, with a `.` unless the path is empty.
fn join_field(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD_EU: &str = include_str!("../../docs/examples/prod-eu.yaml");

    fn invalid(result: Result<Manifest, ManifestError>) -> Vec<String> {
        match result {
            Err(ManifestError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn syntax(result: Result<Manifest, ManifestError>) -> (String, Option<usize>, Option<usize>) {
        match result {
            Err(ManifestError::Syntax {
                message,
                line,
                column,
            }) => (message, line, column),
            other => panic!("expected a Syntax error, got {other:?}"),
        }
    }

    #[test]
    fn design_example_parses_validates_and_normalizes() {
        let manifest = parse_manifest(PROD_EU.as_bytes(), ManifestFormat::Yaml).unwrap();
        assert_eq!(manifest.metadata.name, "prod-eu");
        assert_eq!(manifest.metadata.labels["team"], "platform");
        assert_eq!(manifest.spec.kubernetes_version, "1.31.2");
        assert_eq!(manifest.spec.firewall[0].ports.as_deref(), Some("443"));
        let pools: Vec<&str> = manifest
            .spec
            .pools
            .iter()
            .map(|pool| pool.name.as_str())
            .collect();
        assert_eq!(pools, ["control-plane", "workers"]);
        assert_eq!(manifest.spec.pools[1].replicas, 5);
        assert_eq!(manifest.spec.policy.drift, "correct");
        assert_eq!(manifest.stream(), "cluster/prod-eu");
    }

    #[test]
    fn json_form_of_a_manifest_parses_to_the_same_manifest() {
        let from_yaml = parse_manifest(PROD_EU.as_bytes(), ManifestFormat::Yaml).unwrap();
        let json = serde_json::to_vec_pretty(&from_yaml).unwrap();
        let from_json = parse_manifest(&json, ManifestFormat::Json).unwrap();
        assert_eq!(from_yaml, from_json);
    }

    #[test]
    fn parsing_sorts_named_lists_by_name() {
        let yaml = PROD_EU.replace(
            "subnets:\n      - {name: a,",
            "subnets:\n      - {name: b, cidr: 10.0.2.0/24}\n      - {name: a,",
        );
        let manifest = parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).unwrap();
        let subnets: Vec<&str> = manifest
            .spec
            .network
            .subnets
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(subnets, ["a", "b"]);
    }

    #[test]
    fn unquoted_yaml_numbers_become_strings_for_ports_and_version() {
        let yaml = PROD_EU.replace("ports: \"443\"", "ports: 443");
        let manifest = parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).unwrap();
        assert_eq!(manifest.spec.firewall[0].ports.as_deref(), Some("443"));

        let yaml = PROD_EU.replace("kubernetesVersion: 1.31.2", "kubernetesVersion: 1.31");
        let errors = invalid(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.kubernetesVersion: \"1.31\" is not a semantic version"),
            "{errors:?}"
        );
    }

    #[test]
    fn yaml_syntax_error_names_line_and_column() {
        let yaml = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: [prod\n";
        let (message, line, column) = syntax(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!((line, column), (Some(4), Some(1)), "{message}");
        assert_eq!(
            message,
            "did not find expected ',' or ']', while parsing a flow sequence at line 3 column 18"
        );

        let yaml = "apiVersion: cairn/v1\nkind: Cluster\n  metadata: x\n";
        let (message, line, column) = syntax(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!((line, column), (Some(3), Some(11)), "{message}");
    }

    #[test]
    fn json_syntax_error_names_line_and_column() {
        let json =
            "{\n  \"apiVersion\": \"cairn/v1\",\n  \"kind\": \"Cluster\" \"metadata\": {}\n}";
        let (message, line, column) = syntax(parse_manifest(json.as_bytes(), ManifestFormat::Json));
        assert_eq!((line, column), (Some(3), Some(21)), "{message}");
        assert_eq!(message, "expected `,` or `}`");

        let error = parse_manifest(json.as_bytes(), ManifestFormat::Json).unwrap_err();
        assert_eq!(
            error.to_string(),
            "syntax error at line 3, column 21: expected `,` or `}`"
        );
    }

    #[test]
    fn non_utf8_input_is_a_syntax_error_naming_the_byte_offset() {
        let mut bytes = b"apiVersion: cairn/v1\nkind: Clu".to_vec();
        bytes.push(0xff);
        for format in [ManifestFormat::Yaml, ManifestFormat::Json] {
            let (message, line, column) = syntax(parse_manifest(&bytes, format));
            assert_eq!(message, "invalid UTF-8 at byte offset 30");
            assert_eq!((line, column), (Some(2), Some(10)));
        }
    }

    #[test]
    fn empty_or_non_mapping_document_is_invalid_at_the_root() {
        let cases: &[(&str, ManifestFormat, &str)] = &[
            (
                "",
                ManifestFormat::Yaml,
                "expected a mapping, found an empty document",
            ),
            (
                "# only a comment\n",
                ManifestFormat::Yaml,
                "expected a mapping, found an empty document",
            ),
            (
                "---\n",
                ManifestFormat::Yaml,
                "expected a mapping, found an empty document",
            ),
            (
                " \n",
                ManifestFormat::Json,
                "expected a mapping, found an empty document",
            ),
            (
                "- a\n- b\n",
                ManifestFormat::Yaml,
                "expected a mapping, found a list",
            ),
            (
                "\"cluster\"",
                ManifestFormat::Json,
                "expected a mapping, found a string",
            ),
            (
                "null",
                ManifestFormat::Json,
                "expected a mapping, found null",
            ),
        ];
        for (input, format, expected) in cases {
            let error = parse_manifest(input.as_bytes(), *format).unwrap_err();
            assert_eq!(
                error,
                ManifestError::Invalid(vec![FieldError::new("", *expected)]),
                "{input:?}"
            );
        }
    }

    #[test]
    fn several_yaml_documents_are_a_syntax_error() {
        let yaml = format!("{PROD_EU}---\n{PROD_EU}");
        let (message, _, _) = syntax(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!(message, "expected one YAML document, found more than one");
    }

    #[test]
    fn type_error_names_its_path_together_with_unknown_fields() {
        let yaml = PROD_EU
            .replace("kind: Cluster", "kind: Cluster\ncolour: blue")
            .replace("replicas: 5", "replicas: five");
        let errors = invalid(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0], "colour: unknown field");
        assert!(
            errors[1].starts_with("spec.pools[1].replicas: invalid type: string \"five\""),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_field_is_reported_at_its_own_path() {
        let yaml = PROD_EU.replace("  region: eu-west-1\n", "");
        let errors = invalid(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        assert_eq!(errors, ["spec.region: missing field"]);
    }

    #[test]
    fn invalid_error_lists_every_field_error_in_its_message() {
        let error = ManifestError::Invalid(vec![
            FieldError::new("kind", "expected \"Cluster\", got \"Clutser\""),
            FieldError::new("spec.region", "missing field"),
        ]);
        assert_eq!(
            error.to_string(),
            "invalid manifest, 2 errors:\n  kind: expected \"Cluster\", got \"Clutser\"\n  spec.region: missing field"
        );
    }
}
