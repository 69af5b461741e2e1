//! Names that go or move: `unlink`, `rename` and `link`.
//!
//! * An image's tag is removed exactly (`delete.one-tag`); a rename puts the source's
//!   manifest under the target in one manifest write and then removes the source tag.
//! * A local file is discarded by `unlink`; renamed onto an image name it is published
//!   there (the rename is the manifest write); renamed onto another local name it moves.
//!   An image renamed onto a local name is EXDEV: `mv` then copies it.
//! * A directory renamed to a new path moves every image below it: all are retagged first,
//!   and only then are the old tags removed, so a failure part way leaves both names
//!   readable.

use std::ffi::OsStr;

use reposure_registry::names::Reference;
use tracing::{info, warn};

use super::{Filesystem, Named};
use crate::errno::{FsError, FsResult};
use crate::inode::ImageName;
use crate::namespace;

impl Filesystem {
    /// An image name in `dir` that must be a tag this mount can change.
    async fn tag_name(&self, dir: &str, name: &str) -> FsResult<ImageName> {
        if !Self::plausible(dir, name) {
            return Err(FsError::NotFound);
        }
        match self.named(dir, name).await? {
            Named::Dir(_) => Err(FsError::IsDirectory),
            Named::Image(image) if image.tag().is_none() => Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            )),
            Named::Image(image) => Ok(image),
        }
    }

    fn refuse_if_writing(&self, image: &ImageName) -> FsResult<()> {
        if self.writing.lock().expect("lock").contains_key(image) {
            return Err(FsError::NotPermitted("the file is open for writing".into()));
        }
        Ok(())
    }

    /// `unlink`: deletes one tag, or discards a local file.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        if let Some(local) = self.locals.remove(&dir, name) {
            self.inodes.unpin(local.ino);
            info!(dir, name, "local file discarded");
            return Ok(());
        }
        let image = self.tag_name(&dir, name).await?;
        self.refuse_if_writing(&image)?;
        self.delete_tag(&image).await
    }

    /// Deletes one tag and forgets what it made stale.
    async fn delete_tag(&self, image: &ImageName) -> FsResult<()> {
        let tag = image.tag().expect("a tag name");
        let result = self.registry.delete_tag(&image.repository, tag).await;
        self.metadata.invalidate(image);
        self.forget_names(image);
        match result {
            Ok(()) => {
                info!(image = %image, "deleted tag");
                Ok(())
            }
            Err(e) => {
                warn!(image = %image, error = %e, "delete failed");
                Err(e.into())
            }
        }
    }

    /// `rename`: of an image (a retag), of a local file (a publish, or a move), or of a
    /// directory (every image below it retagged).
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let (dir, new_dir) = (self.dir_path(parent)?, self.dir_path(new_parent)?);
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let new_name = new_name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        if self.locals.get(&dir, name).is_some() {
            return self
                .rename_local(&dir, name, &new_dir, new_name, no_replace)
                .await;
        }
        if Self::plausible(&dir, name)
            && let Named::Dir(path) = self.named(&dir, name).await?
        {
            return self
                .rename_dir(&path, &namespace::join(&new_dir, new_name), new_name)
                .await;
        }
        let source = self.tag_name(&dir, name).await?;
        if Self::local_name(&new_dir, new_name) {
            self.metadata.resolve(&source).await?;
            return Err(FsError::CrossDevice(
                "an image cannot become a local file; copy it instead".into(),
            ));
        }
        let target = self.new_tag_name(&new_dir, new_name).await?;
        if source == target {
            // Renaming a name onto itself changes nothing, if the name exists.
            return self.metadata.resolve(&source).await.map(|_| ());
        }
        self.refuse_if_writing(&source)?;
        if no_replace && self.metadata.resolve(&target).await.is_ok() {
            return Err(FsError::Exists);
        }
        self.retag(&source, &target).await?;
        self.delete_tag(&source).await.inspect_err(|e| {
            warn!(from = %source, error = %e, "the new tag is in place, but the old one could not be removed");
        })
    }

    /// Puts `source`'s manifest under `target` (blobs mounted across repositories).
    async fn retag(&self, source: &ImageName, target: &ImageName) -> FsResult<()> {
        let from = Reference::Tag(source.tag().expect("a tag").to_owned());
        let digest = self
            .registry
            .tag(
                &source.repository,
                &from,
                &target.repository,
                target.tag().expect("a tag"),
            )
            .await?;
        self.metadata.invalidate(target);
        self.metadata.published(&target.repository);
        self.forget_names(target);
        info!(from = %source, to = %target, %digest, "retagged");
        Ok(())
    }

    /// A local file renamed: published under an image name, or moved to another local name.
    async fn rename_local(
        &self,
        dir: &str,
        name: &str,
        new_dir: &str,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        if no_replace && self.locals.get(new_dir, new_name).is_some() {
            return Err(FsError::Exists);
        }
        if Self::local_name(new_dir, new_name) {
            // Onto another local name: it stays local.
            let file = self.locals.remove(dir, name).ok_or(FsError::NotFound)?;
            if let Some(replaced) = self.locals.remove(new_dir, new_name) {
                self.inodes.unpin(replaced.ino);
            }
            self.locals.insert(new_dir, new_name, file);
            return Ok(());
        }
        let target = self.new_tag_name(new_dir, new_name).await?;
        if no_replace && self.metadata.resolve(&target).await.is_ok() {
            return Err(FsError::Exists);
        }
        self.refuse_if_writing(&target)?;
        let file = self.locals.get(dir, name).ok_or(FsError::NotFound)?;
        // The push is the rename: until its manifest is written, readers see the old image.
        // A failed push leaves the local file where it was.
        let digest = self
            .publisher
            .publish(&target, &file.staged)
            .await
            .map_err(FsError::PushFailed)?;
        // The kernel holds this directory's lock during a rename: its entries are dropped
        // once the rename returns, nobody waits for that here.
        drop((self.on_published(&target))(&digest));
        if let Some(file) = self.locals.remove(dir, name) {
            self.inodes.unpin(file.ino);
        }
        info!(from = name, to = %target, %digest, size = file.staged.size(), "published a local file by renaming it");
        Ok(())
    }

    /// A directory renamed to `to` (a new path): every image below it retagged there, then
    /// the old tags removed; local files and directories move along.
    async fn rename_dir(&self, from: &str, to: &str, new_name: &str) -> FsResult<()> {
        if from == to {
            return Ok(());
        }
        namespace::check_new_dir(to, new_name)?;
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::InvalidName(
                "a directory cannot move into itself".into(),
            ));
        }
        if self.metadata.is_dir(to).await? || self.locals.any_under(to) {
            return Err(FsError::NotEmpty);
        }
        let catalog = self.metadata.catalog().await?;
        let prefix = format!("{from}/");
        let repositories: Vec<&String> =
            catalog.iter().filter(|r| r.starts_with(&prefix)).collect();
        let mut moves = Vec::new();
        for repository in repositories {
            let moved_repository = format!("{to}/{}", &repository[prefix.len()..]);
            for tag in self.metadata.tags(repository).await?.iter() {
                let name = |repository: &str| ImageName {
                    repository: repository.to_owned(),
                    reference: Reference::Tag(tag.clone()),
                };
                moves.push((name(repository), name(&moved_repository)));
            }
        }
        for (source, _) in &moves {
            self.refuse_if_writing(source)?;
        }
        for (done, (source, target)) in moves.iter().enumerate() {
            if let Err(e) = self.retag(source, target).await {
                let moved: Vec<String> = moves[..done].iter().map(|(s, _)| s.to_string()).collect();
                warn!(
                    failed = %source,
                    error = %e,
                    ?moved,
                    "moving the directory failed part way: the images listed moved, and every old name is still in place"
                );
                return Err(e);
            }
        }
        for (source, _) in &moves {
            self.delete_tag(source).await.inspect_err(|e| {
                warn!(image = %source, error = %e, "every image moved, but this old tag could not be removed");
            })?;
        }
        self.locals.move_dir(from, to);
        self.metadata.move_dirs(from, to);
        self.inodes.move_dir(from, to);
        info!(from, to, images = moves.len(), "moved a directory");
        Ok(())
    }

    /// A new name for an image in `dir`, validated as for create.
    async fn new_tag_name(&self, dir: &str, name: &str) -> FsResult<ImageName> {
        if name.contains('@') {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        }
        let (repository, tag) = namespace::image_for_create(dir, name)?;
        if !name.contains(':') && self.metadata.is_dir(&repository).await? {
            return Err(FsError::IsDirectory);
        }
        Ok(ImageName {
            repository,
            reference: Reference::Tag(tag),
        })
    }

    /// `link`: adds a tag for the very version `ino` is.
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<super::Attr> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let (source, info) = match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            crate::inode::Inode::Image { name, info } => (name, info),
            crate::inode::Inode::Dir(_) => {
                return Err(FsError::NotPermitted("directories cannot be linked".into()));
            }
            crate::inode::Inode::Writing { .. } | crate::inode::Inode::Local(_) => {
                return Err(FsError::NotPermitted(
                    "the file is not published yet".into(),
                ));
            }
        };
        let new_dir = self.dir_path(new_parent)?;
        let new_name = new_name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        let target = self.new_tag_name(&new_dir, new_name).await?;
        if self.metadata.resolve(&target).await.is_ok() {
            return Err(FsError::Exists);
        }
        self.registry
            .tag(
                &source.repository,
                &Reference::Digest(info.digest.clone()),
                &target.repository,
                target.tag().expect("a tag"),
            )
            .await?;
        self.metadata.invalidate(&target);
        self.metadata.published(&target.repository);
        self.forget_names(&target);
        info!(from = %source, to = %target, digest = %info.digest, "linked");
        self.image_now(&target).await
    }
}
