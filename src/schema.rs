//! JSON Schemas of the manifest, of the event envelope and of the exec plugin
//! protocol, generated from the Rust types. The checked-in copies under `schemas/` are what editors and
//! other tools use; a test fails when they are stale.
//!
//! To regenerate: `CAIRN_UPDATE_SCHEMAS=1 cargo test --lib schema`.

use crate::model::Manifest;
use crate::provider::exec::PluginMessage;
use crate::wire::EventView;

/// The files under `schemas/` and the schema each must hold.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let mut manifest =
        serde_json::to_value(schemars::schema_for!(Manifest)).expect("a schema serializes");
    manifest["$id"] = "https://cairn.dev/schemas/manifest.schema.json".into();
    manifest["title"] = "Cairn Cluster manifest (cairn/v1)".into();
    let mut event =
        serde_json::to_value(schemars::schema_for!(EventView)).expect("a schema serializes");
    event["$id"] = "https://cairn.dev/schemas/event.schema.json".into();
    event["title"] = "Cairn event envelope, as the API returns it".into();
    let mut plugin =
        serde_json::to_value(schemars::schema_for!(PluginMessage)).expect("a schema serializes");
    plugin["$id"] = "https://cairn.dev/schemas/exec-plugin.schema.json".into();
    plugin["title"] =
        "Cairn exec plugin protocol, version 1: one JSON line in either direction".into();
    vec![
        ("manifest.schema.json", manifest),
        ("event.schema.json", event),
        ("exec-plugin.schema.json", plugin),
    ]
}

/// The text a schema file holds: pretty JSON and a final newline.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("CAIRN_UPDATE_SCHEMAS").is_some();
        for (file, schema) in schemas() {
            let path = dir.join(file);
            let expected = render(&schema);
            if update {
                std::fs::write(&path, &expected).unwrap();
                continue;
            }
            let actual = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                actual == expected,
                "schemas/{file} is stale: run CAIRN_UPDATE_SCHEMAS=1 cargo test --lib schema"
            );
        }
    }

    #[test]
    fn manifest_schema_forbids_unknown_fields_like_the_parser() {
        let manifest = &schemas()[0].1;
        let text = manifest.to_string();
        assert!(text.contains("\"additionalProperties\":false"), "{text}");
        assert!(text.contains("kubernetesVersion"));
    }
}
