//! Parsing a manifest from YAML or JSON bytes, with errors that name a place.
//!
//! Parsing runs in three steps, and together they report every problem they
//! can see instead of stopping at the first one:
//!
//! 1. Syntax: the bytes become a `serde_json::Value`. A syntax error names the
//!    line and column where the document broke. A key that appears twice in
//!    one mapping is refused here too, by its path (`spec.pools[0].replicas`).
//! 2. Typing: the value becomes a [`Manifest`]. Every unknown field is
//!    reported by its path (`spec.pools[0].replica`), and so is every value of
//!    the wrong type (`spec.pools[0].replicas`) and every missing field: each
//!    is replaced by a placeholder of the right type and typing runs again.
//! 3. Validation: [`validate`] checks the rules that types cannot express, on
//!    the typed manifest, placeholders included; what it says about a
//!    placeholder is dropped.
//!
//! Paths use the manifest's own camelCase names, joined with `.` for fields
//! and `[i]` for list elements, so a user can find the place in their file.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::manifest::Manifest;
use super::validate::{validate, FieldError};

/// The deepest a manifest's mappings and lists may nest. A manifest nests
/// six levels at most (`spec.pools[0].labels.key`); the rest is room.
pub const MAX_MANIFEST_DEPTH: usize = 32;

/// The most values (scalars, mappings and lists) a manifest may hold. A
/// manifest must fit one stored event of 64 KiB, which holds fewer than this.
pub const MAX_MANIFEST_NODES: usize = 20_000;

/// The surface syntax of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// YAML 1.2, as users usually write manifests. Exactly one document.
    Yaml,
    /// JSON, as the HTTP API and the `exec` plugins exchange them.
    Json,
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
    /// every problem found, in the order described at [`parse_manifest`].
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
/// Bytes that are not UTF-8, YAML or JSON give [`ManifestError::Syntax`].
/// Everything else gives [`ManifestError::Invalid`] with every problem found:
///
/// - A key written twice in one mapping (`spec.pools[0].replicas: duplicate
///   key`) stops parsing before typing: all such keys are reported, alone.
/// - A document that is empty or is not a mapping is reported alone, at the
///   root (path `""`).
/// - Otherwise the errors come in three groups, in this order:
///   1. unknown fields;
///   2. type errors (`invalid type: string "five", expected i64`) and missing
///      fields (`missing field`);
///   3. validation errors, from [`validate`].
///
///   Groups 1 and 2 follow the order in which typing meets them: keys in
///   alphabetical order within each mapping (as serde_json keeps them), list
///   elements in order, and a missing field once the rest of its mapping has
///   been read. Group 3 is in document order (see [`validate`]).
///
/// A type error or a missing field does not stop typing: the value at its path
/// is replaced by a placeholder of the expected type (`0`, `""`, `[]`, `{}`,
/// `false`), and typing runs again, so the errors after it are found too. A
/// validation error at or under such a path is dropped, since it would only be
/// about the placeholder; so is a type error or missing field under it (an
/// empty `{}` put in place of a pool lacks every field of a pool). Typing
/// gives up after 64 rounds, or when a place still fails after its
/// placeholder; it then reports the errors found so far, without validation.
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

    let typed = parse_typed(value);
    let mut errors = typed.unknown_fields;
    errors.extend(typed.type_errors.iter().cloned());
    let Some(mut manifest) = typed.manifest else {
        return Err(ManifestError::Invalid(errors));
    };
    // A subnet replaced by a placeholder has lost its name, so the pools that
    // refer to it by name would be reported as naming a missing subnet.
    let subnet_names_are_placeholders = typed.type_errors.iter().any(|type_error| {
        is_at_or_under(&type_error.path, "spec.network.subnets")
            || is_at_or_under("spec.network.subnets", &type_error.path)
    });
    let about_placeholder = |error: &FieldError| {
        typed
            .type_errors
            .iter()
            .any(|type_error| is_at_or_under(&error.path, &type_error.path))
            || (subnet_names_are_placeholders && error.reason.starts_with("no subnet named"))
    };
    errors.extend(
        validate(&manifest)
            .into_iter()
            .filter(|error| !about_placeholder(error)),
    );
    if !errors.is_empty() {
        return Err(ManifestError::Invalid(errors));
    }
    manifest.normalize();
    Ok(manifest)
}

/// Whether `path` is `parent` or lies under it: `spec.pools[1].name` is under
/// `spec.pools[1]` and `spec.pools`, but not under `spec.pool`. The empty path
/// is the whole document.
///
/// This compares text, so a label key containing `.` or `[` could look like a
/// child of another label; the worst that does is hide a validation error
/// next to a type error.
fn is_at_or_under(path: &str, parent: &str) -> bool {
    parent.is_empty()
        || path
            .strip_prefix(parent)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The syntax step: bytes to a JSON value, or `None` for an empty document.
///
/// A key written twice in one mapping makes this step fail with every such
/// key, by path, rather than let the last one win silently.
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
    let mut reading = Reading::new(MAX_MANIFEST_DEPTH, MAX_MANIFEST_NODES);
    let seed = UniqueKeys {
        place: Place::Root,
        depth: 0,
        reading: &mut reading,
    };
    let value = match format {
        ManifestFormat::Json => {
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            if text.trim().is_empty() {
                return Ok(None);
            }
            let mut deserializer = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut deserializer)
                .and_then(|value| deserializer.end().map(|()| value))
                .map_err(|error| {
                    let (line, column) = (error.line(), error.column());
                    let message = strip_location(&error.to_string(), line, column);
                    ManifestError::Syntax {
                        message,
                        line: (line > 0).then_some(line),
                        column: (line > 0).then_some(column),
                    }
                })?
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
            // Bounded before it is parsed: libyaml's time grows with the
            // square of the flow nesting, and serde_norway reads a whole
            // document before it deserializes any of it.
            let limits = super::yaml_shape::ShapeLimits {
                max_depth: MAX_MANIFEST_DEPTH,
                max_nodes: MAX_MANIFEST_NODES,
            };
            super::yaml_shape::check_shape(text, limits).map_err(shape_error)?;
            let mut documents = serde_norway::Deserializer::from_str(text);
            let Some(document) = documents.next() else {
                return Ok(None);
            };
            let value = seed.deserialize(document).map_err(yaml_error)?;
            if documents.next().is_some() {
                return Err(ManifestError::Syntax {
                    message: "expected one YAML document, found more than one".to_string(),
                    line: None,
                    column: None,
                });
            }
            if value.is_null() {
                return Ok(None);
            }
            value
        }
    };
    if !reading.duplicates.is_empty() {
        return Err(ManifestError::Invalid(reading.duplicates));
    }
    Ok(Some(value))
}

fn shape_error(error: super::yaml_shape::ShapeError) -> ManifestError {
    use super::yaml_shape::ShapeError;
    let (message, line, column) = match error {
        ShapeError::TooDeep {
            limit,
            line,
            column,
        } => (too_deep(limit), line, column),
        ShapeError::TooManyNodes {
            limit,
            line,
            column,
        } => (too_many_nodes(limit), line, column),
    };
    ManifestError::Syntax {
        message,
        line: Some(line),
        column: Some(column),
    }
}

fn too_deep(limit: usize) -> String {
    format!("mappings and lists nest deeper than {limit} levels")
}

fn too_many_nodes(limit: usize) -> String {
    format!("the document holds more than {limit} values")
}

/// What reading one document has found so far, and how far it may go.
struct Reading {
    /// Keys met twice in one mapping.
    duplicates: Vec<FieldError>,
    /// Values read, to stop past `max_nodes`.
    nodes: usize,
    max_nodes: usize,
    max_depth: usize,
}

impl Reading {
    fn new(max_depth: usize, max_nodes: usize) -> Reading {
        Reading {
            duplicates: Vec::new(),
            nodes: 0,
            max_nodes,
            max_depth,
        }
    }
}

/// Why [`parse_json_unique`] refused a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, or nested past the limit; the message names the line and
    /// column.
    #[error("{0}")]
    Syntax(String),
    /// A key appears twice in one object, at this path (`alerts[0].labels.pool`).
    #[error("duplicate key at {0}")]
    DuplicateKey(String),
}

/// Reads a JSON document into a `Value`, refusing a key that appears twice in
/// one object (`serde_json` would keep the last, so two readers of the same
/// body could disagree on what it says). Nesting is bounded by serde_json's
/// own limit (128). Webhook payloads are read with it.
pub fn parse_json_unique(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut reading = Reading::new(128, usize::MAX);
    let seed = UniqueKeys {
        place: Place::Root,
        depth: 0,
        reading: &mut reading,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| JsonError::Syntax(error.to_string()))?;
    match reading.duplicates.into_iter().next() {
        Some(duplicate) => Err(JsonError::DuplicateKey(duplicate.path)),
        None => Ok(value),
    }
}

/// Where a value sits in the document being read: a linked list from the
/// value up to the root, on the stack, formatted only to name a duplicate.
#[derive(Clone, Copy)]
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl Place<'_> {
    /// The place as a path, e.g. `spec.pools[0].replicas`.
    fn path(&self) -> String {
        match self {
            Place::Root => String::new(),
            Place::Key(parent, key) => join_field(&parent.path(), key),
            Place::Index(parent, index) => format!("{}[{index}]", parent.path()),
        }
    }
}

/// Reads one value at `place` into a `serde_json::Value`, exactly as
/// `Value::deserialize` does, except that a key already met in the same
/// mapping is pushed to `duplicates`, once per key and mapping (the later
/// value wins, and reading goes on to find the other duplicates). Works with any
/// deserializer, so serde_json and serde_norway share it.
///
/// It stops at the first value past the reading's `max_nodes` or nested past
/// its `max_depth` (a manifest's: [`MAX_MANIFEST_NODES`], [`MAX_MANIFEST_DEPTH`]),
/// while the deserializer reads: a JSON body is
/// refused as soon as it goes past them, not after it is all read.
struct UniqueKeys<'p, 'd> {
    place: Place<'p>,
    /// How many mappings and lists this value is inside.
    depth: usize,
    reading: &'d mut Reading,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.reading.nodes += 1;
        if self.reading.nodes > self.reading.max_nodes {
            return Err(serde::de::Error::custom(too_many_nodes(
                self.reading.max_nodes,
            )));
        }
        deserializer.deserialize_any(self)
    }
}

impl UniqueKeys<'_, '_> {
    /// Refuses a mapping or list that would nest past the limit.
    fn enter<E: serde::de::Error>(&self) -> Result<usize, E> {
        if self.depth >= self.reading.max_depth {
            return Err(E::custom(too_deep(self.reading.max_depth)));
        }
        Ok(self.depth + 1)
    }
}

/// The scalars go as in serde_json's own `Value` visitor.
impl<'de> Visitor<'de> for UniqueKeys<'_, '_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_i128<E: serde::de::Error>(self, value: i128) -> Result<Value, E> {
        let number = serde::de::value::I128Deserializer::new(value);
        serde_json::Number::deserialize(number).map(Value::Number)
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u128<E: serde::de::Error>(self, value: u128) -> Result<Value, E> {
        let number = serde::de::value::U128Deserializer::new(value);
        serde_json::Number::deserialize(number).map(Value::Number)
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let UniqueKeys { place, reading, .. } = self;
        let mut elements = Vec::new();
        loop {
            let element = UniqueKeys {
                place: Place::Index(&place, elements.len()),
                depth,
                reading: &mut *reading,
            };
            match seq.next_element_seed(element)? {
                Some(element) => elements.push(element),
                None => return Ok(Value::Array(elements)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let UniqueKeys { place, reading, .. } = self;
        let mut object = serde_json::Map::new();
        // The keys already reported, so that a key written thrice is one error.
        let mut reported = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let place = Place::Key(&place, &key);
            if object.contains_key(&key) && reported.insert(key.clone()) {
                reading
                    .duplicates
                    .push(FieldError::new(place.path(), "duplicate key"));
            }
            let value = map.next_value_seed(UniqueKeys {
                place,
                depth,
                reading: &mut *reading,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
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

/// The most rounds of typing for one manifest. Each round types the whole
/// value again and finds at most one new problem, so this bounds the work.
/// The doc comment of [`parse_manifest`] states this number.
const MAX_TYPING_ROUNDS: usize = 64;

/// What the typing step found.
#[derive(Default)]
struct Typed {
    /// The manifest, with placeholders where `type_errors` point; `None` when
    /// typing gave up.
    manifest: Option<Manifest>,
    /// Every unknown field, once each.
    unknown_fields: Vec<FieldError>,
    /// Every type error and missing field, except those under another one.
    type_errors: Vec<FieldError>,
}

/// One step of a path into a `Value`, to find the place of a placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
}

/// What was put at a place that failed typing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// `null`, put because the type expected there was unknown (a missing
    /// field, or a message that does not say): the next round's error there
    /// says which type, and is not reported.
    Probe,
    /// A placeholder of the expected type, or the key removed as a last
    /// resort. A place that fails again after this makes typing give up.
    Final,
}

/// The typing step: a JSON value to a [`Manifest`], collecting every unknown
/// field, type error and missing field.
///
/// Each round types the value, with `serde_ignored` noting unknown fields and
/// `serde_path_to_error` giving the path of the first error. The error is
/// recorded, unless it lies under an earlier one (then it is about a
/// placeholder), the value at its path is replaced by a placeholder (see
/// [`Fix`]) and the next round begins. Unknown fields are gathered over all
/// rounds, once each by path: each round meets those of the round before
/// again, and one met inside a value that a later placeholder replaced (a
/// list given for a struct, read element by element before it failed) is
/// still in the user's document, so it is still reported.
fn parse_typed(mut value: Value) -> Typed {
    let mut typed = Typed::default();
    let mut unknown_seen = HashSet::new();
    // The steps of each recorded error, and what was put at each place.
    let mut recorded: Vec<Vec<Step>> = Vec::new();
    let mut fixes: HashMap<Vec<Step>, Fix> = HashMap::new();
    // Placeholders by place with list indexes erased, so that a missing field
    // seen in one pool needs no probe in the next.
    let mut learned: HashMap<Vec<Step>, Value> = HashMap::new();

    for _ in 0..MAX_TYPING_ROUNDS {
        let mut ignored = Vec::new();
        let mut on_ignored = |path: serde_ignored::Path<'_>| ignored.push(ignored_path(&path));
        let deserializer = serde_ignored::Deserializer::new(&value, &mut on_ignored);
        let result: Result<Manifest, _> = serde_path_to_error::deserialize(deserializer);
        for path in ignored {
            if unknown_seen.insert(path.clone()) {
                typed
                    .unknown_fields
                    .push(FieldError::new(path, "unknown field"));
            }
        }
        let error = match result {
            Ok(manifest) => {
                typed.manifest = Some(manifest);
                break;
            }
            Err(error) => error,
        };

        let (field_error, steps) = type_error(&error);
        let Some(steps) = steps else {
            // A place that cannot be found in the value cannot be fixed.
            typed.type_errors.push(field_error);
            break;
        };
        let previous = fixes.get(&steps).copied();
        if previous == Some(Fix::Final) {
            break;
        }
        if previous.is_none() && !recorded.iter().any(|parent| steps.starts_with(parent)) {
            typed.type_errors.push(field_error);
            recorded.push(steps.clone());
        }

        let shape: Vec<Step> = steps
            .iter()
            .map(|step| match step {
                Step::Index(_) => Step::Index(0),
                Step::Key(_) => step.clone(),
            })
            .collect();
        let message = error.inner().to_string();
        let (placeholder, fix) = match placeholder_for(&message) {
            Some(placeholder) => {
                learned.insert(shape, placeholder.clone());
                (Some(placeholder), Fix::Final)
            }
            None => match learned.get(&shape) {
                Some(placeholder) => (Some(placeholder.clone()), Fix::Final),
                None if previous.is_none() => (Some(Value::Null), Fix::Probe),
                None => (None, Fix::Final),
            },
        };
        if put(&mut value, &steps, placeholder).is_none() {
            break;
        }
        fixes.insert(steps, fix);
    }
    typed
}

/// A placeholder of the type that a typing error expected, read from the end
/// of serde's message: `invalid type: string "five", expected i64` gives `0`.
/// `None` when the message names no type (a missing field, a list too long
/// for a struct).
fn placeholder_for(message: &str) -> Option<Value> {
    // The expected part comes last; the found part may quote the user's text.
    let (_, expected) = message.rsplit_once(", expected ")?;
    let placeholder = match expected {
        "a string" => Value::String(String::new()),
        "a boolean" => Value::Bool(false),
        "a sequence" => Value::Array(Vec::new()),
        "a map" => Value::Object(serde_json::Map::new()),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" => Value::from(0),
        "f32" | "f64" => Value::from(0.0),
        // `struct Pool`, or `struct Pool with 6 elements` for a short list.
        _ if expected.starts_with("struct ") => Value::Object(serde_json::Map::new()),
        _ => return None,
    };
    Some(placeholder)
}

/// Puts `placeholder` at `steps` in `value`, replacing what is there or adding
/// the key; `None` as the placeholder removes the key. Returns `None` when the
/// place does not exist (or is a list element to remove).
fn put(value: &mut Value, steps: &[Step], placeholder: Option<Value>) -> Option<()> {
    let Some((last, parents)) = steps.split_last() else {
        *value = placeholder?;
        return Some(());
    };
    let mut parent = value;
    for step in parents {
        parent = match (step, parent) {
            (Step::Key(key), Value::Object(object)) => object.get_mut(key)?,
            (Step::Index(index), Value::Array(array)) => array.get_mut(*index)?,
            _ => return None,
        };
    }
    match (last, parent, placeholder) {
        (Step::Key(key), Value::Object(object), Some(placeholder)) => {
            object.insert(key.clone(), placeholder);
        }
        (Step::Key(key), Value::Object(object), None) => {
            object.remove(key)?;
        }
        (Step::Index(index), Value::Array(array), Some(placeholder)) => {
            *array.get_mut(*index)? = placeholder;
        }
        _ => return None,
    }
    Some(())
}

/// Converts a typing error into a field error, with the steps to its place in
/// the value (`None` if the path has a segment that is not a key or an index).
/// A missing field is reported at the path of the field itself rather than at
/// the mapping that lacks it.
fn type_error(
    error: &serde_path_to_error::Error<serde_json::Error>,
) -> (FieldError, Option<Vec<Step>>) {
    let path = typed_path(error.path());
    let mut steps: Option<Vec<Step>> = error
        .path()
        .iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            _ => None,
        })
        .collect();
    let message = error.inner().to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match missing {
        Some(field) => {
            if let Some(steps) = &mut steps {
                steps.push(Step::Key(field.to_string()));
            }
            (
                FieldError::new(join_field(&path, field), "missing field"),
                steps,
            )
        }
        None => (FieldError::new(path, message), steps),
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
mod rules_tests;

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

    /// Parses `input` and checks that it is refused with exactly `expected`.
    #[track_caller]
    fn check(input: &str, format: ManifestFormat, expected: &[&str]) {
        let actual = invalid(parse_manifest(input.as_bytes(), format));
        assert_eq!(actual, expected, "\ninput: {input}");
    }

    #[test]
    fn duplicate_keys_are_refused_by_path() {
        let yaml = ManifestFormat::Yaml;
        let json = ManifestFormat::Json;
        let cases: &[(&str, ManifestFormat, &[&str])] = &[
            (r#"{"kind":"Bogus","kind":"Cluster"}"#, json, &["kind: duplicate key"]),
            (
                r#"{"spec":{"pools":[{"name":"a"},{"replicas":1,"name":"b","replicas":2}]}}"#,
                json,
                &["spec.pools[1].replicas: duplicate key"],
            ),
            // Three times is still one duplicate; the same key in another
            // mapping is no duplicate at all.
            (
                r#"{"a":{"b":[{"c":1,"c":2,"c":3}],"c":4},"a":1}"#,
                json,
                &["a.b[0].c: duplicate key", "a: duplicate key"],
            ),
            ("kind: Bogus\nkind: Cluster\n", yaml, &["kind: duplicate key"]),
            (
                "spec:\n  region: a\n  pools:\n    - {name: a}\n    - name: b\n      replicas: 1\n      replicas: 2\n  region: b\n",
                yaml,
                &["spec.pools[1].replicas: duplicate key", "spec.region: duplicate key"],
            ),
            // YAML keys are compared as the strings they become.
            ("1: a\n\"1\": b\n", yaml, &["1: duplicate key"]),
        ];
        for (input, format, expected) in cases {
            check(input, *format, expected);
        }

        // A duplicate is reported alone, before any type or validation error.
        let yaml = PROD_EU
            .replace("replicas: 5", "replicas: five, replicas: 5")
            .replace("kind: Cluster", "kind: Pod\ncolour: blue");
        check(
            &yaml,
            ManifestFormat::Yaml,
            &["spec.pools[1].replicas: duplicate key"],
        );
        let manifest = parse_manifest(PROD_EU.as_bytes(), ManifestFormat::Yaml).unwrap();
        let json = serde_json::to_string(&manifest).unwrap().replacen(
            "\"kind\":\"Cluster\"",
            "\"kind\":\"Cluster\",\"kind\":\"Pod\"",
            1,
        );
        check(&json, ManifestFormat::Json, &["kind: duplicate key"]);

        // A syntax error still wins over a duplicate met before it.
        let (message, line, _) = syntax(parse_manifest(
            b"{\"kind\":1,\"kind\":2,}",
            ManifestFormat::Json,
        ));
        assert_eq!((message.as_str(), line), ("trailing comma", Some(1)));
    }

    #[test]
    fn pathological_documents_end_promptly_with_sensible_paths() {
        let yaml = ManifestFormat::Yaml;
        let cases: &[(&str, &[&str])] = &[
            (
                "spec: 5",
                &[
                    "spec: invalid type: integer `5`, expected struct ClusterSpec",
                    "apiVersion: missing field",
                    "kind: missing field",
                    "metadata: missing field",
                ],
            ),
            (
                "metadata: []",
                &[
                    "metadata: invalid length 0, expected struct Metadata with 2 elements",
                    "apiVersion: missing field",
                    "kind: missing field",
                    "spec: missing field",
                ],
            ),
            // serde accepts a list for a struct, field by field, and says so.
            (
                "metadata: [1, 2, 3]",
                &[
                    "metadata[0]: invalid type: integer `1`, expected a string",
                    "metadata[1]: invalid type: integer `2`, expected a map",
                    "metadata: invalid length 3, expected fewer elements in array",
                    "apiVersion: missing field",
                    "kind: missing field",
                    "spec: missing field",
                ],
            ),
            // The missing fields of each placeholder `{}` are not reported,
            // those of the user's own `{}` are; `kind` shows that typing went
            // all the way through to validation.
            (
                "kind: Bogus\nspec: {pools: [1, \"x\", [], {}]}",
                &[
                    "spec.pools[0]: invalid type: integer `1`, expected struct Pool",
                    "spec.pools[1]: invalid type: string \"x\", expected struct Pool",
                    "spec.pools[2]: invalid length 0, expected struct Pool with 6 elements",
                    "spec.pools[3].name: missing field",
                    "spec.pools[3].role: missing field",
                    "spec.pools[3].replicas: missing field",
                    "spec.pools[3].machineType: missing field",
                    "spec.pools[3].image: missing field",
                    "spec.pools[3].subnets: missing field",
                    "spec.provider: missing field",
                    "spec.region: missing field",
                    "spec.kubernetesVersion: missing field",
                    "spec.network: missing field",
                    "apiVersion: missing field",
                    "metadata: missing field",
                    "kind: expected \"Cluster\", got \"Bogus\"",
                ],
            ),
            (
                "{apiVersion: [], kind: {}, metadata: 1, spec: [], extra: null}",
                &[
                    "extra: unknown field",
                    "apiVersion: invalid type: sequence, expected a string",
                    "kind: invalid type: map, expected a string",
                    "metadata: invalid type: integer `1`, expected struct Metadata",
                    "spec: invalid length 0, expected struct ClusterSpec with 7 elements",
                ],
            ),
        ];
        for (input, expected) in cases {
            check(input, yaml, expected);
        }
    }

    #[test]
    fn typing_gives_up_after_a_bounded_number_of_rounds() {
        let pool = "{name: p, role: worker, replicas: x, machineType: m, image: i, subnets: [a]}";
        let pools = format!("{pool}, ").repeat(3 * MAX_TYPING_ROUNDS);
        let yaml = format!("spec: {{pools: [{pools}]}}");
        let errors = invalid(parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml));
        // One error per round, then the errors found so far, unvalidated.
        assert_eq!(errors.len(), MAX_TYPING_ROUNDS, "{errors:#?}");
        for (index, error) in errors.iter().enumerate() {
            assert_eq!(
                *error,
                format!("spec.pools[{index}].replicas: invalid type: string \"x\", expected i64")
            );
        }
    }

    #[test]
    fn placeholders_follow_the_expected_type_in_the_message() {
        let cases: &[(&str, Option<Value>)] = &[
            (
                "invalid type: string \"five\", expected i64",
                Some(Value::from(0)),
            ),
            (
                "invalid value: integer `-1`, expected u32",
                Some(Value::from(0)),
            ),
            (
                "invalid type: integer `1`, expected a string",
                Some(Value::from("")),
            ),
            (
                "invalid type: string \"a\", expected a sequence",
                Some(Value::from(Vec::<Value>::new())),
            ),
            (
                "invalid type: sequence, expected a map",
                Some(serde_json::json!({})),
            ),
            (
                "invalid type: integer `5`, expected struct ClusterSpec",
                Some(serde_json::json!({})),
            ),
            (
                "invalid length 0, expected struct Pool with 6 elements",
                Some(serde_json::json!({})),
            ),
            (
                "invalid type: string \"no\", expected a boolean",
                Some(Value::Bool(false)),
            ),
            // The user's text cannot pass for the expected type.
            (
                "invalid type: string \"x, expected a map\", expected i64",
                Some(Value::from(0)),
            ),
            ("invalid length 3, expected fewer elements in array", None),
            ("missing field `region`", None),
        ];
        for (message, expected) in cases {
            assert_eq!(placeholder_for(message), *expected, "{message}");
        }
    }

    #[test]
    fn a_path_is_at_or_under_its_parents_only() {
        let cases = [
            ("spec.pools[1].name", "spec.pools[1]", true),
            ("spec.pools[1].name", "spec.pools", true),
            ("spec.pools[1]", "spec.pools[1]", true),
            ("spec.pools[1]", "", true),
            ("spec.pools[10]", "spec.pools[1]", false),
            ("spec.pools", "spec.pool", false),
            ("spec.pools", "spec.pools[1]", false),
        ];
        for (path, parent, expected) in cases {
            assert_eq!(
                is_at_or_under(path, parent),
                expected,
                "{path} under {parent}"
            );
        }
    }

    /// The syntax error of parsing `text`, as (message, line, column).
    fn syntax_error(text: &str, format: ManifestFormat) -> (String, Option<usize>, Option<usize>) {
        syntax(parse_manifest(text.as_bytes(), format))
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_goes_past_in_yaml_and_json() {
        // 80,000 nested flow mappings took libyaml 41 s to parse.
        let yaml = format!("{}1{}", "{a: ".repeat(80_000), "}".repeat(80_000));
        assert_eq!(
            syntax_error(&yaml, ManifestFormat::Yaml),
            (
                too_deep(MAX_MANIFEST_DEPTH),
                Some(1),
                Some(4 * MAX_MANIFEST_DEPTH + 1)
            )
        );
        let json = format!("{}1{}", "{\"a\": ".repeat(80_000), "}".repeat(80_000));
        let (message, line, _) = syntax_error(&json, ManifestFormat::Json);
        assert_eq!(
            (message.as_str(), line),
            (too_deep(MAX_MANIFEST_DEPTH).as_str(), Some(1))
        );
        // Block nesting counts too.
        let mut block = String::new();
        for level in 0..40 {
            block.push_str(&format!("{}a:\n", "  ".repeat(level)));
        }
        let (message, line, _) = syntax_error(&block, ManifestFormat::Yaml);
        assert_eq!(
            (message, line),
            (too_deep(MAX_MANIFEST_DEPTH), Some(MAX_MANIFEST_DEPTH + 1))
        );
    }

    #[test]
    fn a_document_of_too_many_values_is_refused_at_the_first_one_over() {
        let items = vec!["1"; MAX_MANIFEST_NODES + 10].join(",");
        for (text, format) in [
            (format!("[{items}]"), ManifestFormat::Yaml),
            (format!("[{items}]"), ManifestFormat::Json),
            (format!("a: [{items}]"), ManifestFormat::Yaml),
        ] {
            let (message, line, _) = syntax_error(&text, format);
            assert_eq!(
                (message, line),
                (too_many_nodes(MAX_MANIFEST_NODES), Some(1)),
                "{format:?}"
            );
        }
        // The example manifest is far from either limit.
        let example = include_str!("../../docs/examples/prod-eu.yaml");
        assert!(parse_manifest(example.as_bytes(), ManifestFormat::Yaml).is_ok());
    }
}
