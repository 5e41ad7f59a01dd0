//! The GitHub receiver: a push to the watched branch applies the cluster
//! manifests found under a directory of the repository (GitOps). Pure
//! functions, no IO: [`parse`] reads the payload, `git.rs` reads the files at
//! the pushed commit, and [`plan_push`] turns both into actions.
//!
//! A push is planned from the files at `after`, not from the commits in the
//! payload: the payload lists at most 2048 commits and 3000 changed files, the
//! repository does not. Every manifest file under `path` is applied on every
//! push; applying an unchanged manifest writes no event, so this is safe and
//! heals a delivery that was missed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::action::{DeliveryPlan, HookAction, PlannedHookAction, Skipped};
use super::payload::{from_json, is_commit_id, is_zero_commit, PayloadError};
use crate::model::{parse_manifest, Manifest, ManifestFormat};

/// The settings of a `type = "github"` hook, under `[hooks.<name>]`.
///
/// ```toml
/// [hooks.infra]
/// type = "github"
/// secret = "..."
/// repository = "/var/lib/cairn/infra"   # a local clone
/// remote = "origin"                      # fetched before reading; unset: never fetched
/// branch = "main"
/// path = "clusters"                      # "" or unset: the repository root
/// prune = false                          # true: a removed file deletes its cluster
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// A local clone of the repository the hook receives pushes of.
    pub repository: PathBuf,
    /// The remote fetched before reading a pushed commit, e.g. `origin`. When
    /// unset, the clone is expected to be kept up to date by other means.
    #[serde(default)]
    pub remote: Option<String>,
    /// The branch whose pushes are applied; pushes to others are ignored.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The directory of manifests inside the repository, searched
    /// recursively; the empty string is the repository root.
    #[serde(default)]
    pub path: String,
    /// Whether a manifest file removed by a push marks its cluster for
    /// deletion (when no remaining file declares the cluster).
    #[serde(default)]
    pub prune: bool,
}

fn default_branch() -> String {
    "main".to_string()
}

impl GithubSettings {
    /// Refuses settings that would be unsafe on the git command line or could
    /// never match a push. Meant for config load.
    pub fn validate(&self) -> Result<(), String> {
        if self.repository.as_os_str().is_empty() {
            return Err("repository: must be the path of a local git clone".to_string());
        }
        if let Some(remote) = &self.remote {
            if remote.is_empty() || remote.starts_with('-') || remote.contains(char::is_whitespace)
            {
                return Err(format!(
                    "remote {remote:?}: must be a remote name such as \"origin\""
                ));
            }
        }
        if self.branch.is_empty() || self.branch.starts_with('-') || self.branch.contains("..") {
            return Err(format!("branch {:?}: must be a branch name", self.branch));
        }
        if self.path.starts_with('/')
            || self.path.split('/').any(|part| part == "..")
            || self.path.starts_with('-')
        {
            return Err(format!(
                "path {:?}: must be a directory relative to the repository root",
                self.path
            ));
        }
        Ok(())
    }

    /// The ref a push must name to be applied: `refs/heads/<branch>`.
    pub fn git_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }
}

/// A file read from the repository at some commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// The path from the repository root, with `/` separators.
    pub path: String,
    /// The file's content.
    pub bytes: Vec<u8>,
}

/// The format of a manifest file, from its extension (`.yaml`, `.yml`,
/// `.json`); `None` for any other file, which is not a manifest.
pub fn manifest_format(path: &str) -> Option<ManifestFormat> {
    let (_, extension) = path.rsplit_once('.')?;
    match extension {
        "yaml" | "yml" => Some(ManifestFormat::Yaml),
        "json" => Some(ManifestFormat::Json),
        _ => None,
    }
}

/// The manifest directory as git pathspecs want it: no leading `./`, no
/// trailing `/`; the empty string is the repository root.
pub fn normalize_dir(dir: &str) -> &str {
    let dir = dir.strip_prefix("./").unwrap_or(dir);
    let dir = dir.trim_end_matches('/');
    if dir == "." {
        ""
    } else {
        dir
    }
}

/// Whether the file at `path` lies under the directory `dir` (normalized by
/// [`normalize_dir`]). `clusters` holds `clusters/a.yaml` and
/// `clusters/eu/b.yaml`, but not `clusters-old/c.yaml`.
pub fn is_under(path: &str, dir: &str) -> bool {
    let dir = normalize_dir(dir);
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A GitHub delivery, by its `X-GitHub-Event` header. It is what the inbox
/// records (as JSON) and reads back to process the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum GithubEvent {
    /// Sent once when the webhook is created.
    Ping { zen: String, hook_id: u64 },
    /// One or more commits pushed to a ref (or a ref created or deleted).
    Push(Push),
    /// Any other event; its body is not read.
    Other { event: String },
}

/// The parts of a push payload the receiver uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push {
    /// The full ref pushed, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The commit the ref pointed at before the push; all zeros for a new ref.
    pub before: String,
    /// The commit the ref points at after the push; all zeros for a deletion.
    pub after: String,
    /// The repository's `owner/name`.
    pub repository: String,
    /// The name of the user who pushed.
    pub pusher: String,
    /// Whether the push deleted the ref.
    pub deleted: bool,
    /// Whether the push was a force push.
    pub forced: bool,
    /// The message of the head commit, when the push has one.
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct RawPing {
    zen: String,
    hook_id: u64,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    repository: RawRepository,
    pusher: RawPusher,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    head_commit: Option<RawCommit>,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct RawPusher {
    name: String,
}

#[derive(Deserialize)]
struct RawCommit {
    message: String,
}

/// Reads a GitHub delivery. `event` is the `X-GitHub-Event` header; `ping`
/// and `push` bodies are read, any other event is [`GithubEvent::Other`].
///
/// The commit ids of a push must be 40 or 64 hex digits: they are passed to
/// the git command line.
pub fn parse(event: &str, body: &[u8]) -> Result<GithubEvent, PayloadError> {
    match event {
        "ping" => {
            let ping: RawPing = from_json(body)?;
            Ok(GithubEvent::Ping {
                zen: ping.zen,
                hook_id: ping.hook_id,
            })
        }
        "push" => {
            let raw: RawPush = from_json(body)?;
            for (field, commit) in [("before", &raw.before), ("after", &raw.after)] {
                if !is_commit_id(commit) {
                    return Err(PayloadError::field(
                        field,
                        "expected a 40 or 64 hex digit commit id",
                    ));
                }
            }
            if !raw.git_ref.starts_with("refs/") {
                return Err(PayloadError::field(
                    "ref",
                    "expected a full ref such as refs/heads/main",
                ));
            }
            Ok(GithubEvent::Push(Push {
                deleted: raw.deleted || is_zero_commit(&raw.after),
                git_ref: raw.git_ref,
                before: raw.before.to_ascii_lowercase(),
                after: raw.after.to_ascii_lowercase(),
                repository: raw.repository.full_name,
                pusher: raw.pusher.name,
                forced: raw.forced,
                message: raw.head_commit.map(|commit| commit.message),
            }))
        }
        other => Ok(GithubEvent::Other {
            event: other.to_string(),
        }),
    }
}

/// Plans a push: `after_files` are the files under `settings.path` at
/// `push.after`, `removed_files` those the push removed, with their content at
/// `push.before` (both from `git.rs`). `delivery` is the `X-GitHub-Delivery`
/// header; the action keys are `<delivery>/<n>`, `n` counting from 0.
///
/// - A push to another ref, or one that deletes the branch, is ignored.
/// - Each manifest file under `settings.path` becomes an `Apply`; a file that
///   does not parse is skipped, with the parse error, and the others apply.
/// - Two files declaring the same cluster are both skipped.
/// - A removed file whose cluster is declared by no file at `after` marks the
///   cluster for deletion when `settings.prune` is set, and is skipped
///   otherwise. A renamed file (same cluster, new path) deletes nothing.
///   When a file at `after` does not parse, it might declare any cluster, so
///   no deletion is planned: the removed files are skipped until it is fixed.
pub fn plan_push(
    settings: &GithubSettings,
    push: &Push,
    delivery: &str,
    after_files: &[ManifestFile],
    removed_files: &[ManifestFile],
) -> DeliveryPlan {
    let mut plan = DeliveryPlan::default();
    let branch_ref = settings.git_ref();
    if push.git_ref != branch_ref {
        plan.ignored = Some(format!(
            "a push to {}, not to the watched branch {branch_ref}",
            push.git_ref
        ));
        return plan;
    }
    if push.deleted {
        plan.ignored = Some(format!(
            "the push deleted {branch_ref}; the clusters declared on it are kept"
        ));
        return plan;
    }

    let details = |file: &str| -> BTreeMap<String, String> {
        BTreeMap::from([
            ("commit".to_string(), push.after.clone()),
            ("pusher".to_string(), push.pusher.clone()),
            ("repository".to_string(), push.repository.clone()),
            ("file".to_string(), file.to_string()),
            ("ref".to_string(), push.git_ref.clone()),
        ])
    };

    // The manifests at `after`, by cluster name, in path order.
    let mut declared: BTreeMap<String, Vec<(&str, Manifest)>> = BTreeMap::new();
    let mut unparsed: Vec<&str> = Vec::new();
    for (file, format) in manifest_files(settings, after_files) {
        match parse_manifest(&file.bytes, format) {
            Ok(manifest) => declared
                .entry(manifest.metadata.name.clone())
                .or_default()
                .push((&file.path, manifest)),
            Err(error) => {
                unparsed.push(&file.path);
                plan.skipped.push(Skipped {
                    subject: file.path.clone(),
                    reason: error.to_string(),
                });
            }
        }
    }

    let mut applies: Vec<(&str, Manifest)> = Vec::new();
    for (name, files) in declared.iter() {
        if files.len() > 1 {
            let paths: Vec<&str> = files.iter().map(|(path, _)| *path).collect();
            for (path, _) in files {
                plan.skipped.push(Skipped {
                    subject: path.to_string(),
                    reason: format!(
                        "cluster {name} is declared by {} files ({}); none of them is applied",
                        paths.len(),
                        paths.join(", ")
                    ),
                });
            }
        } else {
            applies.extend(files.iter().cloned());
        }
    }
    applies.sort_by(|left, right| left.0.cmp(right.0));
    for (path, manifest) in applies {
        plan.actions.push(PlannedHookAction {
            action: HookAction::Apply {
                manifest: Box::new(manifest),
            },
            key: String::new(),
            details: details(path),
        });
    }

    // Clusters whose last file was removed, by name, with the first such file.
    let mut gone: BTreeMap<String, &str> = BTreeMap::new();
    for (file, format) in manifest_files(settings, removed_files) {
        match parse_manifest(&file.bytes, format) {
            Ok(manifest) => {
                let name = manifest.metadata.name;
                if declared.contains_key(&name) {
                    continue; // Moved or renamed: the cluster is still declared.
                }
                if !settings.prune {
                    plan.skipped.push(Skipped {
                        subject: file.path.clone(),
                        reason: format!(
                            "the file was removed, but prune is off: cluster {name} is kept"
                        ),
                    });
                } else if !unparsed.is_empty() {
                    plan.skipped.push(Skipped {
                        subject: file.path.clone(),
                        reason: format!(
                            "the file was removed, but cluster {name} is not deleted while {} \
                             does not parse (it may declare the cluster)",
                            unparsed.join(", ")
                        ),
                    });
                } else {
                    gone.entry(name).or_insert(&file.path);
                }
            }
            Err(error) => plan.skipped.push(Skipped {
                subject: file.path.clone(),
                reason: format!(
                    "the file was removed, but its content before the push does not parse, \
                     so its cluster is unknown and kept: {error}"
                ),
            }),
        }
    }
    for (cluster, path) in gone {
        plan.actions.push(PlannedHookAction {
            action: HookAction::RequestDeletion { cluster },
            key: String::new(),
            details: details(path),
        });
    }

    // Keys name what they do, not where they are in the plan, so that a
    // plan made again after a crash (by a build with other rules) can never
    // take one action for another.
    for action in &mut plan.actions {
        action.key = match &action.action {
            HookAction::Apply { manifest } => {
                format!("{delivery}/apply/{}", manifest.metadata.name)
            }
            HookAction::RequestDeletion { cluster } => format!("{delivery}/delete/{cluster}"),
            other => format!("{delivery}/{other:?}"),
        };
    }
    plan
}

/// The manifest files of `files` under the settings' path, sorted by path.
fn manifest_files<'a>(
    settings: &GithubSettings,
    files: &'a [ManifestFile],
) -> Vec<(&'a ManifestFile, ManifestFormat)> {
    let mut selected: Vec<(&ManifestFile, ManifestFormat)> = files
        .iter()
        .filter(|file| is_under(&file.path, &settings.path))
        .filter_map(|file| manifest_format(&file.path).map(|format| (file, format)))
        .collect();
    selected.sort_by(|left, right| left.0.path.cmp(&right.0.path));
    selected.dedup_by(|left, right| left.0.path == right.0.path);
    selected
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PING: &str = include_str!("../../tests/fixtures/webhooks/github-ping.json");
    pub(crate) const PUSH: &str = include_str!("../../tests/fixtures/webhooks/github-push.json");
    const EXAMPLE: &str = include_str!("../../docs/examples/prod-eu.yaml");

    /// The example manifest, declaring cluster `name` with `replicas` workers.
    pub(crate) fn manifest_yaml(name: &str, replicas: u32) -> String {
        let text = EXAMPLE.replace("name: prod-eu", &format!("name: {name}"));
        assert_ne!(text, EXAMPLE);
        text.replace(
            "{name: workers, role: worker, replicas: 5,",
            &format!("{{name: workers, role: worker, replicas: {replicas},"),
        )
    }

    fn file(path: &str, text: &str) -> ManifestFile {
        ManifestFile {
            path: path.to_string(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn settings(path: &str, prune: bool) -> GithubSettings {
        GithubSettings {
            repository: PathBuf::from("/srv/infra"),
            remote: None,
            branch: "main".to_string(),
            path: path.to_string(),
            prune,
        }
    }

    fn push() -> Push {
        match parse("push", PUSH.as_bytes()).unwrap() {
            GithubEvent::Push(push) => push,
            other => panic!("expected a push, got {other:?}"),
        }
    }

    fn applied(plan: &DeliveryPlan) -> Vec<(String, String)> {
        plan.actions
            .iter()
            .map(|planned| match &planned.action {
                HookAction::Apply { manifest } => (
                    manifest.metadata.name.clone(),
                    planned.details["file"].clone(),
                ),
                HookAction::RequestDeletion { cluster } => {
                    (format!("delete {cluster}"), planned.details["file"].clone())
                }
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(left, right)| (left.to_string(), right.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_ping_fixture() {
        let event = parse("ping", PING.as_bytes()).unwrap();
        assert_eq!(
            event,
            GithubEvent::Ping {
                zen: "Design for failure.".to_string(),
                hook_id: 512_334_071,
            }
        );
    }

    #[test]
    fn reads_the_push_fixture() {
        let push = push();
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.before, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
        assert_eq!(push.after, "b7e3f8a2c4d5e6f708192a3b4c5d6e7f8091a2b3");
        assert_eq!(push.repository, "acme/infra");
        assert_eq!(push.pusher, "octocat");
        assert!(!push.deleted);
        assert!(!push.forced);
        assert_eq!(
            push.message.as_deref(),
            Some("Scale prod-eu workers to 6\n\nMore traffic expected this week.")
        );
    }

    #[test]
    fn other_events_are_not_read() {
        assert_eq!(
            parse("issues", b"not even json").unwrap(),
            GithubEvent::Other {
                event: "issues".to_string()
            }
        );
    }

    fn edited(pointer: &str, value: serde_json::Value) -> Vec<u8> {
        crate::webhook::payload::test_edits::edited(PUSH, pointer, value)
    }

    fn without(parent: &str, field: &str) -> Vec<u8> {
        crate::webhook::payload::test_edits::without(PUSH, parent, field)
    }

    #[test]
    fn errors_name_the_field() {
        let error = |body: &[u8]| parse("push", body).unwrap_err().to_string();
        assert_eq!(
            error(&edited("/after", "HEAD".into())),
            "`after`: expected a 40 or 64 hex digit commit id"
        );
        assert_eq!(
            error(&edited("/before", format!("--{}", "a".repeat(38)).into())),
            "`before`: expected a 40 or 64 hex digit commit id"
        );
        assert_eq!(
            error(&edited("/after", 42.into())),
            "`after`: invalid type: integer `42`, expected a string"
        );
        assert_eq!(
            error(&edited("/forced", "yes".into())),
            "`forced`: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            error(&edited("/ref", "main".into())),
            "`ref`: expected a full ref such as refs/heads/main"
        );
        assert_eq!(error(&without("", "after")), "`after`: missing field");
        assert_eq!(
            error(&without("/repository", "full_name")),
            "`repository.full_name`: missing field"
        );
        assert_eq!(
            error(&without("/pusher", "name")),
            "`pusher.name`: missing field"
        );
        assert_eq!(
            parse("ping", br#"{"zen": "z", "hook_id": "7"}"#)
                .unwrap_err()
                .to_string(),
            "`hook_id`: invalid type: string \"7\", expected u64"
        );
        assert!(matches!(parse("push", b"{"), Err(PayloadError::Syntax(_))));
    }

    #[test]
    fn a_deleted_branch_and_other_refs_are_ignored() {
        let settings = settings("", true);
        let files = [file("a.yaml", &manifest_yaml("a", 2))];

        let mut other = push();
        other.git_ref = "refs/heads/feature".to_string();
        let plan = plan_push(&settings, &other, "d", &files, &[]);
        assert!(plan.actions.is_empty());
        assert_eq!(
            plan.ignored.as_deref(),
            Some("a push to refs/heads/feature, not to the watched branch refs/heads/main")
        );

        let mut tag = push();
        tag.git_ref = "refs/tags/main".to_string();
        assert!(plan_push(&settings, &tag, "d", &files, &[])
            .ignored
            .is_some());

        let body = edited("/after", "0".repeat(40).into());
        let GithubEvent::Push(deleted) = parse("push", &body).unwrap() else {
            panic!("expected a push");
        };
        assert!(deleted.deleted);
        let plan = plan_push(&settings, &deleted, "d", &files, &files);
        assert!(plan.actions.is_empty());
        assert!(plan.ignored.unwrap().contains("deleted refs/heads/main"));
    }

    #[test]
    fn applies_each_manifest_under_the_path_in_path_order() {
        let files = [
            file("clusters/b.yml", &manifest_yaml("b", 2)),
            file("clusters/eu/a.yaml", &manifest_yaml("a", 3)),
            file("README.md", "# not a manifest"),
            file("clusters/notes.txt", "nor this"),
            file("clusters-old/c.yaml", &manifest_yaml("c", 1)),
            file(
                "clusters/d.json",
                &serde_json::to_string(
                    &serde_norway::from_str::<serde_json::Value>(&manifest_yaml("d", 4)).unwrap(),
                )
                .unwrap(),
            ),
        ];
        let push = push();
        let plan = plan_push(
            &settings("clusters/", false),
            &push,
            "delivery-1",
            &files,
            &[],
        );
        assert_eq!(plan.ignored, None);
        assert_eq!(plan.skipped, vec![]);
        assert_eq!(
            applied(&plan),
            pairs(&[
                ("b", "clusters/b.yml"),
                ("d", "clusters/d.json"),
                ("a", "clusters/eu/a.yaml"),
            ])
        );
        let keys: Vec<&str> = plan
            .actions
            .iter()
            .map(|action| action.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "delivery-1/apply/b",
                "delivery-1/apply/d",
                "delivery-1/apply/a"
            ]
        );
        assert_eq!(
            plan.actions[0].details,
            BTreeMap::from([
                ("commit".to_string(), push.after.clone()),
                ("pusher".to_string(), "octocat".to_string()),
                ("repository".to_string(), "acme/infra".to_string()),
                ("file".to_string(), "clusters/b.yml".to_string()),
                ("ref".to_string(), "refs/heads/main".to_string()),
            ])
        );
        let HookAction::Apply { manifest } = &plan.actions[2].action else {
            panic!("expected an apply");
        };
        let workers = manifest
            .spec
            .pools
            .iter()
            .find(|pool| pool.name == "workers");
        assert_eq!(workers.unwrap().replicas, 3);

        // The root holds every manifest file, at any depth.
        let plan = plan_push(&settings("", false), &push, "d", &files, &[]);
        assert_eq!(plan.actions.len(), 4);
    }

    #[test]
    fn an_invalid_manifest_is_skipped_while_the_others_apply() {
        let broken = manifest_yaml("b", 2).replace("replicas: 2", "replicas: two");
        let files = [
            file("a.yaml", &manifest_yaml("a", 2)),
            file("b.yaml", &broken),
            file("c.yaml", "spec: [unclosed"),
            file("d.yaml", &manifest_yaml("d", 2)),
        ];
        let plan = plan_push(&settings("", false), &push(), "d", &files, &[]);
        assert_eq!(applied(&plan), pairs(&[("a", "a.yaml"), ("d", "d.yaml")]));
        assert_eq!(plan.actions[1].key, "d/apply/d");
        assert_eq!(plan.skipped.len(), 2);
        assert_eq!(plan.skipped[0].subject, "b.yaml");
        assert!(
            plan.skipped[0].reason.contains("spec.pools[1].replicas"),
            "{}",
            plan.skipped[0].reason
        );
        assert_eq!(plan.skipped[1].subject, "c.yaml");
        assert!(plan.skipped[1].reason.starts_with("syntax error"));
    }

    #[test]
    fn two_files_declaring_one_cluster_are_both_skipped() {
        let files = [
            file("a.yaml", &manifest_yaml("shared", 2)),
            file("b.yaml", &manifest_yaml("other", 2)),
            file("c.yaml", &manifest_yaml("shared", 3)),
        ];
        let plan = plan_push(&settings("", true), &push(), "d", &files, &[]);
        assert_eq!(applied(&plan), pairs(&[("other", "b.yaml")]));
        let subjects: Vec<&str> = plan.skipped.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(subjects, ["a.yaml", "c.yaml"]);
        assert_eq!(
            plan.skipped[0].reason,
            "cluster shared is declared by 2 files (a.yaml, c.yaml); none of them is applied"
        );
    }

    #[test]
    fn removed_files_delete_their_cluster_only_with_prune() {
        let after = [file("a.yaml", &manifest_yaml("a", 2))];
        let removed = [
            file("b.yaml", &manifest_yaml("b", 2)),
            file("c.yaml", &manifest_yaml("c", 2)),
        ];

        let plan = plan_push(&settings("", true), &push(), "d", &after, &removed);
        assert_eq!(
            applied(&plan),
            pairs(&[
                ("a", "a.yaml"),
                ("delete b", "b.yaml"),
                ("delete c", "c.yaml")
            ])
        );
        assert_eq!(plan.actions[2].key, "d/delete/c");
        assert_eq!(plan.skipped, vec![]);

        let plan = plan_push(&settings("", false), &push(), "d", &after, &removed);
        assert_eq!(applied(&plan), pairs(&[("a", "a.yaml")]));
        assert_eq!(
            plan.skipped,
            vec![
                Skipped {
                    subject: "b.yaml".to_string(),
                    reason: "the file was removed, but prune is off: cluster b is kept".to_string(),
                },
                Skipped {
                    subject: "c.yaml".to_string(),
                    reason: "the file was removed, but prune is off: cluster c is kept".to_string(),
                },
            ]
        );

        // A removed file outside the path is none of this hook's business.
        let outside = [file("elsewhere/b.yaml", &manifest_yaml("b", 2))];
        let plan = plan_push(&settings("clusters", true), &push(), "d", &[], &outside);
        assert_eq!(plan.actions, vec![]);
        assert_eq!(plan.skipped, vec![]);
    }

    #[test]
    fn a_renamed_file_keeping_its_cluster_is_not_a_deletion() {
        let after = [file("eu/prod.yaml", &manifest_yaml("prod", 2))];
        let removed = [file("prod.yaml", &manifest_yaml("prod", 2))];
        for prune in [true, false] {
            let plan = plan_push(&settings("", prune), &push(), "d", &after, &removed);
            assert_eq!(applied(&plan), pairs(&[("prod", "eu/prod.yaml")]));
            assert_eq!(plan.skipped, vec![]);
        }
    }

    #[test]
    fn no_deletion_while_a_file_does_not_parse() {
        let after = [
            file("a.yaml", &manifest_yaml("a", 2)),
            file("b.yaml", "metadata: {name: b"),
        ];
        let removed = [
            file("old-b.yaml", &manifest_yaml("b", 2)),
            file("x.yaml", "not: [a manifest"),
        ];
        let plan = plan_push(&settings("", true), &push(), "d", &after, &removed);
        assert_eq!(applied(&plan), pairs(&[("a", "a.yaml")]));
        let subjects: Vec<&str> = plan.skipped.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(subjects, ["b.yaml", "old-b.yaml", "x.yaml"]);
        assert!(plan.skipped[1]
            .reason
            .contains("while b.yaml does not parse"));
        assert!(plan.skipped[2].reason.contains("its cluster is unknown"));
    }

    #[test]
    fn settings_read_from_toml_with_defaults() {
        let settings: GithubSettings = toml::from_str(r#"repository = "/srv/infra""#).unwrap();
        assert_eq!(settings, self::settings("", false));
        assert_eq!(settings.validate(), Ok(()));
        let full: GithubSettings = toml::from_str(
            "repository = \"/srv/infra\"\nremote = \"origin\"\nbranch = \"prod\"\n\
             path = \"clusters\"\nprune = true\n",
        )
        .unwrap();
        assert_eq!(full.remote.as_deref(), Some("origin"));
        assert_eq!(full.git_ref(), "refs/heads/prod");
        assert!(toml::from_str::<GithubSettings>("repository = \"/r\"\nprun = true\n").is_err());
        for bad in [
            GithubSettings {
                remote: Some("--upload-pack=evil".to_string()),
                ..settings.clone()
            },
            GithubSettings {
                path: "../etc".to_string(),
                ..settings.clone()
            },
            GithubSettings {
                branch: String::new(),
                ..settings.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_and_formats() {
        assert_eq!(manifest_format("a/b.yaml"), Some(ManifestFormat::Yaml));
        assert_eq!(manifest_format("b.yml"), Some(ManifestFormat::Yaml));
        assert_eq!(manifest_format("b.json"), Some(ManifestFormat::Json));
        assert_eq!(manifest_format("yaml"), None);
        assert_eq!(manifest_format("b.yaml.bak"), None);
        assert!(is_under("clusters/a.yaml", "clusters"));
        assert!(is_under("clusters/a.yaml", "./clusters/"));
        assert!(!is_under("clusters-old/a.yaml", "clusters"));
        assert!(!is_under("clusters", "clusters"));
        assert!(is_under("a.yaml", ""));
        assert!(is_under("a.yaml", "."));
    }
}
