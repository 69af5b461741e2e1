//! The spool daemon: publishes accepted pushes and records a verdict for each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use notify::Watcher;
use tracing::{error, info, warn};

use super::claim::Claim;
use super::legacy::{self, LegacyEntry};
use super::{Entry, SpooledPush, Verdict, take_spooler_lock, write_durably};
use crate::session::wire::WireError;
use reposure_registry::digest::{Digest, verify_stream};
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names;
use reposure_registry::operations::{FileAttributes, FileUpload, Registry};
use reposure_registry::push::{Content, LocalFile, push_path, stream_of};

/// Without change notifications (or if one is missed) the directory is scanned this often.
const RESCAN: Duration = Duration::from_secs(1);

/// Publishes the spool in `dir` to `registry` until the process is stopped.
pub async fn run(dir: PathBuf, registry: Arc<dyn Registry>) -> Result<()> {
    std::fs::create_dir_all(&dir)?;
    let _lock = take_spooler_lock(&dir)?;
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| wakes(&event)) {
            let _ = wake.send(());
        }
    })
    .map_err(|e| RegistryError::Io(std::io::Error::other(e)))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| RegistryError::Io(std::io::Error::other(e)))?;
    info!(dir = %dir.display(), registry = %registry.describe(), "spooler running");
    let spooler = Spooler { dir, registry };
    loop {
        spooler.publish_pending().await;
        tokio::select! {
            _ = woken.recv() => {}
            _ = tokio::time::sleep(RESCAN) => {}
        }
        // Coalesce the burst of events one write makes.
        while woken.try_recv().is_ok() {}
    }
}

/// Whether a change in the directory can mean an entry to publish: a name appeared,
/// moved or went, or a file written to was closed (a `kubectl cp` file is complete; a
/// session let go of its claim). Not the rest: the spooler's own scan opens the directory
/// and the entries it claims, which inotify reports too, and waking on that would rescan
/// without end; nor each write into a file. Closing a named entry (`ID.push`) is never
/// news: entries get their names by a link or rename.
fn wakes(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => !event
            .paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "push")),
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Any
        | EventKind::Other => true,
        _ => false,
    }
}

struct Spooler {
    dir: PathBuf,
    registry: Arc<dyn Registry>,
}

impl Spooler {
    async fn publish_pending(&self) {
        let mut names: Vec<(std::time::SystemTime, String)> = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                names.push((
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    name.to_owned(),
                ));
            }
        }
        // Oldest first, so a later push to the same tag wins.
        names.sort();
        for (modified, name) in names {
            if let Some(id) = name.strip_suffix(".push") {
                self.publish_entry(&Entry {
                    dir: self.dir.clone(),
                    id: id.to_owned(),
                })
                .await;
            } else {
                self.publish_legacy(&name, modified.into()).await;
            }
        }
    }

    async fn publish_entry(&self, entry: &Entry) {
        // A session publishing the entry itself holds it; a session that is gone does not.
        let _claim = match Claim::try_take(&entry.data()) {
            Ok(Some(claim)) => claim,
            Ok(None) => return,
            Err(e) => {
                warn!(entry = %entry.id, error = %e, "cannot claim the entry; trying again later");
                return;
            }
        };
        // A verdict that says "published" means a crash came between publishing and
        // cleaning up: clean up only (exactly once).
        if let Ok(bytes) = tokio::fs::read(entry.verdict()).await
            && let Ok(Verdict::Published { .. }) = serde_json::from_slice(&bytes)
        {
            let _ = tokio::fs::remove_file(entry.data()).await;
            let _ = tokio::fs::remove_file(entry.request()).await;
            return;
        }
        let result = self
            .publish_spooled(entry)
            .await
            .map(|digest| Verdict::Published { digest });
        self.record(
            entry,
            &entry.verdict(),
            &entry.data(),
            &entry.failed(),
            Some(entry.request()),
            result,
        )
        .await;
    }

    async fn publish_spooled(&self, entry: &Entry) -> Result<Digest> {
        let request: SpooledPush = serde_json::from_slice(&tokio::fs::read(entry.request()).await?)
            .map_err(|e| RegistryError::Corrupt(format!("{}: {e}", entry.request().display())))?;
        let data = tokio::fs::File::open(entry.data()).await?;
        let body = stream_of(data, request.request.size);
        // The content was checked on arrival; checking again as it leaves catches a disk
        // that changed it in between.
        let body = verify_stream(body, request.content_digest.clone(), request.request.size);
        let upload = FileUpload {
            file_name: request.request.file_name.clone(),
            size: request.request.size,
            format: request.request.format,
            created: Some(request.created),
            attributes: request.request.attributes,
            body,
        };
        self.registry
            .push_file(&request.request.repository, &request.request.tag, upload)
            .await
    }

    /// Pushes a file of the original's protocol, as the image archive or the file its
    /// name says it is.
    async fn push_legacy(
        &self,
        path: &Path,
        repository: &str,
        tag: &str,
        content: Content,
        modified: DateTime<Utc>,
    ) -> Result<Digest> {
        let file = LocalFile {
            path,
            file_name: names::base_name(repository).to_owned(),
            format: PushFormat::Image,
            created: Some(modified),
            attributes: FileAttributes {
                mode: None,
                modified: Some(modified.into()),
            },
            content,
            scratch_dir: &self.dir,
            progress: None,
        };
        push_path(self.registry.as_ref(), repository, tag, file).await
    }

    async fn publish_legacy(&self, name: &str, modified: DateTime<Utc>) {
        let path = self.dir.join(name);
        let verdict = self.dir.join(format!("{name}.verdict"));
        let failed = self.dir.join(format!("{name}.failed"));
        let result = match legacy::classify(name) {
            LegacyEntry::NotLegacy | LegacyEntry::Temp => return,
            LegacyEntry::Delete { repository, tag } => self
                .registry
                .delete_tag(&repository, &tag)
                .await
                .map(|()| Verdict::Deleted),
            LegacyEntry::Archive { repository, tag } => self
                .push_legacy(&path, &repository, &tag, Content::Archive, modified)
                .await
                .map(|digest| Verdict::Published { digest }),
            LegacyEntry::File { repository, tag } => self
                .push_legacy(&path, &repository, &tag, Content::File, modified)
                .await
                .map(|digest| Verdict::Published { digest }),
        };
        self.record(name, &verdict, &path, &failed, None, result)
            .await;
    }

    /// Records the outcome. A failed entry is set aside as `.failed` before its verdict is
    /// written, so whoever reads the verdict finds the content where the verdict says; a
    /// published entry is removed after its verdict, so a crash in between only leaves
    /// cleaning up to do.
    async fn record(
        &self,
        what: &(impl std::fmt::Display + ?Sized),
        verdict_path: &Path,
        data: &Path,
        failed: &Path,
        request: Option<PathBuf>,
        result: Result<Verdict>,
    ) {
        let verdict = match &result {
            Ok(done) => done.clone(),
            Err(e) => {
                warn!(entry = %what, error = %e, "publish failed; the content is kept");
                if let Err(e) = tokio::fs::rename(data, failed).await {
                    error!(entry = %what, error = %e, "cannot set the failed entry aside; it stays");
                    return;
                }
                Verdict::Failed {
                    error: WireError::from(e),
                }
            }
        };
        if let Err(e) = write_durably(
            verdict_path,
            &serde_json::to_vec(&verdict).expect("serialises"),
        )
        .await
        {
            error!(entry = %what, error = %e, "cannot record the verdict; the entry stays");
            return;
        }
        if let Ok(done) = result {
            match done {
                Verdict::Published { digest } => info!(entry = %what, %digest, "published"),
                _ => info!(entry = %what, "deleted"),
            }
            let _ = tokio::fs::remove_file(data).await;
            if let Some(request) = request {
                let _ = tokio::fs::remove_file(request).await;
            }
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the events that inotify reports within a moment of `act` wake the spooler.
    fn woken_by(dir: &Path, act: impl FnOnce()) -> bool {
        let (events, received) = std::sync::mpsc::channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let _ = events.send(wakes(&event));
                }
            })
            .unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .unwrap();
        act();
        let mut woken = false;
        while let Ok(wakes) = received.recv_timeout(Duration::from_millis(300)) {
            woken |= wakes;
        }
        woken
    }

    #[test]
    fn its_own_scan_does_not_wake_the_spooler_but_a_new_entry_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.push.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("0.push"), b"content").unwrap();
        assert!(!woken_by(dir.path(), || {
            let _ = std::fs::read_dir(dir.path()).unwrap().count();
            let _ = std::fs::read(dir.path().join("old.push.json")).unwrap();
            // Claiming an entry (on NFS, only a descriptor open for writing can).
            drop(Claim::try_take(&dir.path().join("0.push")).unwrap());
        }));
        assert!(woken_by(dir.path(), || {
            std::fs::write(dir.path().join("new.push"), b"content").unwrap();
        }));
        assert!(woken_by(dir.path(), || {
            std::fs::rename(dir.path().join("new.push"), dir.path().join("1.push")).unwrap();
        }));
    }
}
