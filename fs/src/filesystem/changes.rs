//! `setattr`: sizes, modes and times.
//!
//! A file being written or a local file takes a change at once, and its push carries it.
//! An image takes a new mode or time by being published again with the same content (from
//! the mount's own copy when it pushed the image moments before, else fetched): a single-
//! file image records both in its layer's tar header, where extraction by any tool finds
//! them. Setting what the image already records, or only the atime, pushes nothing, so a
//! second `rsync -a` of an unchanged tree, or `touch -c` of nothing new, costs nothing.

use std::sync::Arc;
use std::time::SystemTime;

use reposure_registry::operations::{DEFAULT_FILE_MODE, ImageInfo};
use tracing::{info, warn};

use super::{Attr, Filesystem};
use crate::errno::{FsError, FsResult};
use crate::inode::{ImageName, Inode};
use crate::staged::Staged;
use crate::writer::{CopyUp, INVALIDATION_WAIT, fetch_into};

/// What a `setattr` asks to change (the owner is checked by the adapter, which knows it:
/// only a change to another owner reaches here, as `foreign_owner`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrChanges {
    pub size: Option<u64>,
    /// Permission bits.
    pub mode: Option<u32>,
    pub modified: Option<SystemTime>,
    /// A `chown` to an owner other than the one shown.
    pub foreign_owner: bool,
}

impl AttrChanges {
    fn changes_content_or_mode(&self) -> bool {
        self.size.is_some() || self.mode.is_some() || self.modified.is_some()
    }
}

impl Filesystem {
    /// `setattr` of `ino` (through open handle `fh`, if the caller has one).
    pub async fn setattr(&self, ino: u64, changes: AttrChanges, fh: Option<u64>) -> FsResult<Attr> {
        if changes.foreign_owner {
            return Err(FsError::NotPermitted(
                "files belong to the mount's owner (uid=, gid=)".into(),
            ));
        }
        if self.config.read_only && changes.changes_content_or_mode() {
            return Err(FsError::ReadOnly);
        }
        match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Dir(_) if changes.size.is_some() => Err(FsError::IsDirectory),
            // Directories exist only as names here: copy tools (`cp -a`, `rsync -a`) set
            // their mode and times after making them, which is accepted and keeps nothing.
            Inode::Dir(_) => Ok(self.dir_attr(ino)),
            Inode::Local(staged) => {
                apply_to(&staged, changes)?;
                Ok(self.local_attr(ino, &staged))
            }
            Inode::Writing { name, .. } | Inode::Image { name, .. }
                if self.writer_of(&name, fh).is_some() =>
            {
                let writer = self.writer_of(&name, fh).expect("just found");
                if let Some(size) = changes.size {
                    writer.truncate(size).await?;
                }
                if changes.mode.is_some() || changes.modified.is_some() {
                    writer
                        .set_attributes(changes.mode, changes.modified)
                        .await?;
                }
                Ok(self.writing_attr(ino, &name, writer.staged()))
            }
            // The version the name has now: the kernel's inode may stand for one that an
            // earlier change (`touch` after `chmod`) replaced.
            Inode::Writing { name, .. } | Inode::Image { name, .. } => {
                let info = Arc::new(self.metadata.resolve(&name).await?);
                self.change_image(ino, &name, &info, changes).await
            }
        }
    }

    /// The writer of `name`: the one behind handle `fh`, or the one open on the name.
    fn writer_of(
        &self,
        name: &ImageName,
        fh: Option<u64>,
    ) -> Option<Arc<crate::writer::WriteHandle>> {
        fh.and_then(|fh| self.writer(fh).ok()).or_else(|| {
            self.writing
                .lock()
                .expect("lock")
                .get(name)
                .map(|w| w.writer.clone())
        })
    }

    /// An image's size, mode or time changed: published again if anything differs.
    async fn change_image(
        &self,
        ino: u64,
        name: &ImageName,
        info: &Arc<ImageInfo>,
        changes: AttrChanges,
    ) -> FsResult<Attr> {
        let current = info.attributes;
        let differs = changes
            .mode
            .is_some_and(|m| m & 0o7777 != current.mode.unwrap_or(DEFAULT_FILE_MODE))
            || changes
                .modified
                .is_some_and(|t| Some(t) != current.modified.or(info.created))
            || changes
                .size
                .is_some_and(|s| s != info.content(self.config.unpack).length());
        if !differs {
            return self.getattr(ino).await;
        }
        if name.tag().is_none() {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        }
        if info.file.is_err() && self.config.unpack {
            return Err(FsError::NotPermitted(
                "only an image that reads as one file has a mode, a time and a size to change"
                    .into(),
            ));
        }
        let staged = match self.publisher.recent(name, &info.digest) {
            Some(staged) => staged,
            None => {
                let staged = self.new_staged(DEFAULT_FILE_MODE)?;
                let from = CopyUp {
                    repository: name.repository.clone(),
                    digest: info.digest.clone(),
                    content: info.content(self.config.unpack).clone(),
                    attributes: current,
                };
                fetch_into(self.registry.as_ref(), &from, &staged).await?;
                staged
            }
        };
        apply_to(&staged, changes)?;
        let digest = self
            .publisher
            .publish(name, &staged)
            .await
            .map_err(FsError::PushFailed)?;
        info!(image = %name, %digest, mode = format!("{:o}", staged.mode()), "published again with new attributes");
        // The kernel holds the file's lock, not its directory's: the entry can go at once,
        // and is waited for (as after a `close()`), so that a `stat` right after the
        // `chmod` finds the new image rather than the old version's inode.
        let dropped = (self.on_published(name))(&digest);
        if tokio::time::timeout(INVALIDATION_WAIT, dropped)
            .await
            .is_err()
        {
            warn!(image = %name, "the kernel did not drop the old entry in time; it lasts at most metadata_ttl");
        }
        // Answered for the inode asked about from the content just pushed: asking the
        // registry would cost a probe of the blob the mount already holds.
        Ok(self.writing_attr(ino, name, &staged))
    }
}

/// Applies size, mode and time changes to staged content.
fn apply_to(staged: &Staged, changes: AttrChanges) -> FsResult<()> {
    if let Some(size) = changes.size {
        staged.truncate(size).map_err(FsError::Spool)?;
    }
    if let Some(mode) = changes.mode {
        staged.set_mode(mode);
    }
    if let Some(modified) = changes.modified {
        staged.set_modified(modified);
    }
    Ok(())
}
