//! Reading manifest files from a local git clone, for the GitHub receiver: the
//! IO half of `github.rs`. It runs the git program with `tokio::process`.
//!
//! Hardening, since a delivery's commit ids reach the command line:
//!
//! - Commit ids must be 40 or 64 hex digits (`is_commit_id`), and every path
//!   comes after a `--` separator, so nothing from a payload is read as an
//!   option. `GIT_LITERAL_PATHSPECS=1` makes paths match literally.
//! - `GIT_TERMINAL_PROMPT=0`: a fetch that needs credentials fails instead of
//!   waiting for a password; `GIT_DIR`, `GIT_WORK_TREE` and friends from the
//!   daemon's environment are removed so `-C <repository>` decides.
//! - Each git command has a timeout and is killed when it passes
//!   (`kill_on_drop`). Helpers git starts (ssh, git-remote-https) are not
//!   killed with it; they end when their pipes to git close.
//! - A file larger than [`MAX_MANIFEST_BYTES`] is an error naming it, checked
//!   from the tree listing before the file is read.
//! - A commit the clone does not have is [`GitError::UnknownCommit`], so the
//!   caller can say "fetch" rather than show git's message.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::github::{is_under, manifest_format, normalize_dir, GithubSettings, ManifestFile};
use super::payload::{is_commit_id, is_zero_commit};

/// The largest manifest file read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The most of git's standard error kept in an error message, in bytes.
const MAX_STDERR_BYTES: usize = 4096;

/// Environment variables that would make git look at another repository than
/// the one given with `-C`.
const REPOSITORY_ENV: [&str; 6] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
];

/// Why the repository could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The git program is not installed, or not on the daemon's `PATH`.
    #[error(
        "the git program {program:?} was not found: install git or put it on the daemon's PATH"
    )]
    GitMissing { program: String },
    /// The git program could not be started for another reason.
    #[error("cannot run {program:?}: {message}")]
    Spawn { program: String, message: String },
    /// A commit id is not 40 or 64 hex digits.
    #[error("{0:?} is not a commit id (expected 40 or 64 hex digits)")]
    InvalidCommit(String),
    /// A remote name that git would read as an option.
    #[error("{0:?} is not a remote name")]
    InvalidRemote(String),
    /// The clone does not have the commit: it was not fetched (yet).
    #[error("commit {commit} is not in {repository}; it has not been fetched (set `remote` to fetch before reading)")]
    UnknownCommit { commit: String, repository: String },
    /// A git command ran longer than the timeout and was killed.
    #[error("git {command} did not finish within {timeout_ms} ms and was killed")]
    Timeout { command: String, timeout_ms: u128 },
    /// A git command failed; `stderr` is what it said.
    #[error("git {command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A manifest file is too large to be read.
    #[error("{path} at {commit} is {size} bytes, more than the {MAX_MANIFEST_BYTES} bytes a manifest may have")]
    TooLarge {
        path: String,
        commit: String,
        size: u64,
    },
    /// Git printed something this module cannot read (a manifest file name
    /// that is not UTF-8).
    #[error("unexpected output from git {command}: {problem}")]
    Output { command: String, problem: String },
}

/// One regular file of a tree listing (`git ls-tree -l`).
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    object: String,
    size: u64,
}

/// A local git clone that manifests are read from.
#[derive(Debug, Clone)]
pub struct GitSource {
    repository: PathBuf,
    remote: Option<String>,
    timeout: Duration,
    program: OsString,
}

impl GitSource {
    /// A source reading `repository`, fetching from `remote` when set, with
    /// `timeout` for each git command. It runs `git` from the `PATH`.
    pub fn new(repository: impl Into<PathBuf>, remote: Option<String>, timeout: Duration) -> Self {
        GitSource {
            repository: repository.into(),
            remote,
            timeout,
            program: OsString::from("git"),
        }
    }

    /// The source a GitHub hook's settings describe.
    pub fn from_settings(settings: &GithubSettings, timeout: Duration) -> Self {
        GitSource::new(
            settings.repository.clone(),
            settings.remote.clone(),
            timeout,
        )
    }

    /// Runs `program` instead of `git` from the `PATH`.
    pub fn with_program(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// Fetches the remote (`git fetch --quiet <remote>`), so that a pushed
    /// commit can be read. Does nothing when no remote is set.
    pub async fn fetch(&self) -> Result<(), GitError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if remote.is_empty() || remote.starts_with('-') {
            return Err(GitError::InvalidRemote(remote.clone()));
        }
        self.run(&["fetch", "--quiet", remote]).await.map(drop)
    }

    /// The commit a ref or commit id names in the clone
    /// (`refs/remotes/origin/main`), or None when the clone has no such
    /// commit (`rev-parse --verify --quiet` exits 1, silently).
    pub async fn resolve(&self, reference: &str) -> Result<Option<String>, GitError> {
        if reference.starts_with('-') {
            return Err(GitError::InvalidRemote(reference.to_string()));
        }
        let peeled = format!("{reference}^{{commit}}");
        let output = self
            .output(&["rev-parse", "--verify", "--quiet", &peeled])
            .await?;
        match output.status.code() {
            Some(0) => Ok(Some(
                String::from_utf8_lossy(&output.stdout).trim().to_string(),
            )),
            Some(1) => Ok(None),
            _ => Err(failed("rev-parse", &output)),
        }
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
        for commit in [ancestor, descendant] {
            self.check_commit(commit).await?;
        }
        let output = self
            .output(&["merge-base", "--is-ancestor", ancestor, descendant])
            .await?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(failed("merge-base", &output)),
        }
    }

    /// The manifest files (`.yaml`, `.yml`, `.json`) under the directory
    /// `path` at `commit` ("" is the repository root), sorted by path.
    pub async fn manifests_at(
        &self,
        commit: &str,
        path: &str,
    ) -> Result<Vec<ManifestFile>, GitError> {
        self.check_commit(commit).await?;
        let entries = self.list(commit, path).await?;
        let mut files = Vec::with_capacity(entries.len());
        for entry in &entries {
            files.push(self.read(commit, entry).await?);
        }
        Ok(files)
    }

    /// The manifest files under `path` that exist at `before` and not at
    /// `after`, with their content at `before`, sorted by path. A renamed
    /// file is removed under its old name. Empty when `before` is all zeros
    /// (the push created the branch).
    pub async fn removed_between(
        &self,
        before: &str,
        after: &str,
        path: &str,
    ) -> Result<Vec<ManifestFile>, GitError> {
        if is_zero_commit(before) && is_commit_id(before) {
            return Ok(Vec::new());
        }
        self.check_commit(before).await?;
        self.check_commit(after).await?;
        let dir = normalize_dir(path);
        // diff-tree is git diff's plumbing: it reads no diff configuration.
        let mut args = vec![
            "diff-tree",
            "-r",
            "-z",
            "--name-only",
            "--no-renames",
            "--diff-filter=D",
            before,
            after,
            "--",
        ];
        if !dir.is_empty() {
            args.push(dir);
        }
        let output = self.run(&args).await?;
        let mut removed = Vec::new();
        for name in output
            .split(|byte| *byte == 0)
            .filter(|name| !name.is_empty())
        {
            if let Some(name) = manifest_name(name, "diff-tree")? {
                removed.push(name);
            }
        }
        if removed.is_empty() {
            return Ok(Vec::new());
        }
        let entries = self.list(before, path).await?;
        let mut files = Vec::with_capacity(removed.len());
        for entry in entries.iter().filter(|entry| removed.contains(&entry.path)) {
            files.push(self.read(before, entry).await?);
        }
        Ok(files)
    }

    /// Fails with [`GitError::UnknownCommit`] unless the clone has `commit`.
    async fn check_commit(&self, commit: &str) -> Result<(), GitError> {
        if !is_commit_id(commit) {
            return Err(GitError::InvalidCommit(commit.to_string()));
        }
        match self.resolve(commit).await? {
            Some(_) => Ok(()),
            None => Err(GitError::UnknownCommit {
                commit: commit.to_string(),
                repository: self.repository.display().to_string(),
            }),
        }
    }

    /// The regular manifest files under `path` at `commit`, sorted by path.
    async fn list(&self, commit: &str, path: &str) -> Result<Vec<Entry>, GitError> {
        let dir = normalize_dir(path);
        let mut args = vec!["ls-tree", "-r", "-z", "-l", "--full-tree", commit, "--"];
        if !dir.is_empty() {
            args.push(dir);
        }
        let output = self.run(&args).await?;
        let mut entries = Vec::new();
        for line in output
            .split(|byte| *byte == 0)
            .filter(|line| !line.is_empty())
        {
            let unreadable = || GitError::Output {
                command: "ls-tree".to_string(),
                problem: format!("cannot read {:?}", String::from_utf8_lossy(line)),
            };
            let tab = line
                .iter()
                .position(|byte| *byte == b'\t')
                .ok_or_else(unreadable)?;
            let (meta, name) = (&line[..tab], &line[tab + 1..]);
            let Some(name) = manifest_name(name, "ls-tree")? else {
                continue;
            };
            let meta = std::str::from_utf8(meta).map_err(|_| unreadable())?;
            let fields: Vec<&str> = meta.split_whitespace().collect();
            let [mode, kind, object, size] = fields[..] else {
                return Err(unreadable());
            };
            // Symbolic links (120000) and submodules (commit) are not files.
            if kind != "blob" || !matches!(mode, "100644" | "100755") || !is_under(&name, dir) {
                continue;
            }
            if !is_commit_id(object) {
                return Err(unreadable());
            }
            entries.push(Entry {
                path: name,
                object: object.to_string(),
                size: size.parse().map_err(|_| unreadable())?,
            });
        }
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        Ok(entries)
    }

    /// The content of one listed file.
    async fn read(&self, commit: &str, entry: &Entry) -> Result<ManifestFile, GitError> {
        if entry.size > MAX_MANIFEST_BYTES {
            return Err(GitError::TooLarge {
                path: entry.path.clone(),
                commit: commit.to_string(),
                size: entry.size,
            });
        }
        let bytes = self.run(&["cat-file", "blob", &entry.object]).await?;
        Ok(ManifestFile {
            path: entry.path.clone(),
            bytes,
        })
    }

    /// Runs git with `args`; its standard output when it succeeds.
    async fn run(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let output = self.output(args).await?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(failed(args[0], &output))
        }
    }

    /// Runs git with `args` in the repository, within the timeout.
    async fn output(&self, args: &[&str]) -> Result<std::process::Output, GitError> {
        let mut command = Command::new(&self.program);
        command
            .arg("-C")
            .arg(&self.repository)
            .args(args.iter().map(OsStr::new))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_LITERAL_PATHSPECS", "1")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in REPOSITORY_ENV {
            command.env_remove(name);
        }
        let program = self.program.to_string_lossy().into_owned();
        let child = command.spawn().map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                GitError::GitMissing {
                    program: program.clone(),
                }
            } else {
                GitError::Spawn {
                    program: program.clone(),
                    message: error.to_string(),
                }
            }
        })?;
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(GitError::Spawn {
                program,
                message: error.to_string(),
            }),
            // The child is dropped with the future, which kills it.
            Err(_) => Err(GitError::Timeout {
                command: args[0].to_string(),
                timeout_ms: self.timeout.as_millis(),
            }),
        }
    }
}

/// The name of a listed file when it is a manifest file (by extension); an
/// error when a manifest file's name is not UTF-8.
fn manifest_name(name: &[u8], command: &str) -> Result<Option<String>, GitError> {
    let is_manifest = [&b".yaml"[..], b".yml", b".json"]
        .iter()
        .any(|extension| name.ends_with(extension));
    if !is_manifest {
        return Ok(None);
    }
    let name = String::from_utf8(name.to_vec()).map_err(|_| GitError::Output {
        command: command.to_string(),
        problem: format!(
            "the file name {:?} is not UTF-8",
            String::from_utf8_lossy(name)
        ),
    })?;
    Ok(manifest_format(&name).map(|_| name))
}

fn failed(command: &str, output: &std::process::Output) -> GitError {
    let stderr = &output.stderr[..output.stderr.len().min(MAX_STDERR_BYTES)];
    GitError::Failed {
        command: command.to_string(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::webhook::action::HookAction;
    use crate::webhook::github::tests::manifest_yaml;
    use crate::webhook::github::{plan_push, Push};

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Runs git synchronously for the test's setup, with an identity and no
    /// global or system configuration, so it works on any machine.
    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Cairn Test")
            .env("GIT_AUTHOR_EMAIL", "test@cairn.invalid")
            .env("GIT_COMMITTER_NAME", "Cairn Test")
            .env("GIT_COMMITTER_EMAIL", "test@cairn.invalid")
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn write(dir: &Path, path: &str, text: &str) {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    /// Stages everything and commits; the new commit's id.
    fn commit(dir: &Path, message: &str) -> String {
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "--quiet", "-m", message]);
        git(dir, &["rev-parse", "HEAD"])
    }

    fn init(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "--quiet"]);
    }

    fn paths(files: &[ManifestFile]) -> Vec<&str> {
        files.iter().map(|file| file.path.as_str()).collect()
    }

    fn push(before: &str, after: &str) -> Push {
        Push {
            git_ref: "refs/heads/main".to_string(),
            before: before.to_string(),
            after: after.to_string(),
            repository: "acme/infra".to_string(),
            pusher: "octocat".to_string(),
            deleted: false,
            forced: false,
            message: None,
        }
    }

    #[tokio::test]
    async fn reads_manifests_at_a_commit_and_the_files_a_push_removed() {
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("infra");
        init(&repo);
        write(&repo, "clusters/a.yaml", &manifest_yaml("alpha", 2));
        write(&repo, "clusters/b.yaml", &manifest_yaml("beta", 2));
        write(&repo, "clusters/README.md", "# not a manifest\n");
        write(&repo, "clusters-old/c.yaml", &manifest_yaml("gamma", 2));
        write(&repo, "other/d.yaml", &manifest_yaml("delta", 2));
        let first = commit(&repo, "first");

        write(&repo, "clusters/a.yaml", &manifest_yaml("alpha", 7));
        std::fs::remove_file(repo.join("clusters/b.yaml")).unwrap();
        write(&repo, "clusters/eu/e.yml", &manifest_yaml("epsilon", 2));
        let second = commit(&repo, "second");

        git(&repo, &["mv", "clusters/a.yaml", "clusters/alpha.yaml"]);
        let third = commit(&repo, "rename");

        let source = GitSource::new(&repo, None, TIMEOUT);
        source.fetch().await.unwrap();

        let at_first = source.manifests_at(&first, "clusters").await.unwrap();
        assert_eq!(paths(&at_first), ["clusters/a.yaml", "clusters/b.yaml"]);
        assert_eq!(at_first[0].bytes, manifest_yaml("alpha", 2).into_bytes());

        let at_second = source.manifests_at(&second, "clusters/").await.unwrap();
        assert_eq!(paths(&at_second), ["clusters/a.yaml", "clusters/eu/e.yml"]);
        assert_eq!(at_second[0].bytes, manifest_yaml("alpha", 7).into_bytes());

        let root = source.manifests_at(&second, "").await.unwrap();
        assert_eq!(
            paths(&root),
            [
                "clusters-old/c.yaml",
                "clusters/a.yaml",
                "clusters/eu/e.yml",
                "other/d.yaml"
            ]
        );

        let removed = source
            .removed_between(&first, &second, "clusters")
            .await
            .unwrap();
        assert_eq!(paths(&removed), ["clusters/b.yaml"]);
        assert_eq!(removed[0].bytes, manifest_yaml("beta", 2).into_bytes());
        assert_eq!(
            source
                .removed_between(&first, &second, "other")
                .await
                .unwrap(),
            vec![]
        );
        assert_eq!(
            source
                .removed_between(&"0".repeat(40), &first, "")
                .await
                .unwrap(),
            vec![]
        );

        // With prune, the removed cluster goes; the renamed one stays.
        let settings = GithubSettings {
            repository: repo.clone(),
            remote: None,
            branch: "main".to_string(),
            path: "clusters".to_string(),
            prune: true,
        };
        let plan = plan_push(
            &settings,
            &push(&first, &second),
            "d1",
            &at_second,
            &removed,
        );
        let deletions: Vec<&HookAction> = plan
            .actions
            .iter()
            .map(|action| &action.action)
            .filter(|action| matches!(action, HookAction::RequestDeletion { .. }))
            .collect();
        assert_eq!(
            deletions,
            [&HookAction::RequestDeletion {
                cluster: "beta".to_string()
            }]
        );
        assert_eq!(plan.actions.len(), 3);

        let renamed_away = source
            .removed_between(&second, &third, "clusters")
            .await
            .unwrap();
        assert_eq!(paths(&renamed_away), ["clusters/a.yaml"]);
        let at_third = source.manifests_at(&third, "clusters").await.unwrap();
        let plan = plan_push(
            &settings,
            &push(&second, &third),
            "d2",
            &at_third,
            &renamed_away,
        );
        assert_eq!(plan.actions.len(), 2);
        assert!(plan
            .actions
            .iter()
            .all(|action| matches!(action.action, HookAction::Apply { .. })));
        assert_eq!(plan.skipped, vec![]);
    }

    #[tokio::test]
    async fn a_pushed_commit_is_readable_only_after_fetch() {
        let temp = tempfile::tempdir().unwrap();
        let remote = temp.path().join("remote.git");
        std::fs::create_dir_all(&remote).unwrap();
        git(&remote, &["init", "--quiet", "--bare"]);
        let author = temp.path().join("author");
        init(&author);
        write(&author, "a.yaml", &manifest_yaml("alpha", 2));
        commit(&author, "first");
        git(
            &author,
            &[
                "push",
                "--quiet",
                remote.to_str().unwrap(),
                "HEAD:refs/heads/main",
            ],
        );
        let local = temp.path().join("local");
        git(
            temp.path(),
            &[
                "clone",
                "--quiet",
                remote.to_str().unwrap(),
                local.to_str().unwrap(),
            ],
        );

        write(&author, "b.yaml", &manifest_yaml("beta", 2));
        let second = commit(&author, "second");
        git(
            &author,
            &[
                "push",
                "--quiet",
                remote.to_str().unwrap(),
                "HEAD:refs/heads/main",
            ],
        );

        let source = GitSource::new(&local, Some("origin".to_string()), TIMEOUT);
        let before_fetch = source.manifests_at(&second, "").await.unwrap_err();
        assert_eq!(
            before_fetch,
            GitError::UnknownCommit {
                commit: second.clone(),
                repository: local.display().to_string(),
            }
        );
        source.fetch().await.unwrap();
        let files = source.manifests_at(&second, "").await.unwrap();
        assert_eq!(paths(&files), ["a.yaml", "b.yaml"]);

        let missing = GitSource::new(&local, Some("upstream".to_string()), TIMEOUT);
        match missing.fetch().await.unwrap_err() {
            GitError::Failed {
                command, stderr, ..
            } => {
                assert_eq!(command, "fetch");
                assert!(stderr.contains("upstream"), "{stderr}");
            }
            other => panic!("expected a failed fetch, got {other:?}"),
        }
        let option = GitSource::new(&local, Some("--upload-pack=x".to_string()), TIMEOUT);
        assert!(matches!(
            option.fetch().await,
            Err(GitError::InvalidRemote(_))
        ));
    }

    #[tokio::test]
    async fn refuses_bad_commit_ids_large_files_and_missing_repositories() {
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("infra");
        init(&repo);
        write(&repo, "a.yaml", &manifest_yaml("alpha", 2));
        write(
            &repo,
            "big/huge.yaml",
            &"#".repeat(MAX_MANIFEST_BYTES as usize + 1),
        );
        let head = commit(&repo, "first");
        let source = GitSource::new(&repo, None, TIMEOUT);

        for bad in ["HEAD", "--output=/tmp/x", &head[..39]] {
            assert_eq!(
                source.manifests_at(bad, "").await.unwrap_err(),
                GitError::InvalidCommit(bad.to_string())
            );
        }
        assert!(matches!(
            source.removed_between("main", &head, "").await,
            Err(GitError::InvalidCommit(_))
        ));
        assert!(matches!(
            source.manifests_at(&"ab".repeat(20), "").await,
            Err(GitError::UnknownCommit { .. })
        ));

        let error = source.manifests_at(&head, "").await.unwrap_err();
        assert_eq!(
            error,
            GitError::TooLarge {
                path: "big/huge.yaml".to_string(),
                commit: head.clone(),
                size: MAX_MANIFEST_BYTES + 1,
            }
        );
        assert!(error.to_string().starts_with("big/huge.yaml at "));
        assert_eq!(source.manifests_at(&head, "big-not").await.unwrap(), vec![]);

        let nowhere = GitSource::new(temp.path().join("absent"), None, TIMEOUT);
        match nowhere.manifests_at(&head, "").await.unwrap_err() {
            GitError::Failed { stderr, .. } => {
                assert!(stderr.contains("absent"), "{stderr}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }

        let no_git = GitSource::new(&repo, None, TIMEOUT).with_program(temp.path().join("no-git"));
        assert!(matches!(
            no_git.manifests_at(&head, "").await,
            Err(GitError::GitMissing { .. })
        ));
    }

    #[tokio::test]
    async fn a_git_that_hangs_is_killed_at_the_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let script = temp.path().join("slow-git");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let source = GitSource::new(
            temp.path(),
            Some("origin".to_string()),
            Duration::from_millis(200),
        )
        .with_program(&script);
        let started = std::time::Instant::now();
        assert!(matches!(
            source.fetch().await,
            Err(GitError::Timeout { ref command, .. }) if command == "fetch"
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
