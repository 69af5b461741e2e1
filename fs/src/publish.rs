//! Publishing staged content as an image: the one place the mount pushes a file.
//!
//! A `close()`, an `fsync`, a rename of a local file onto an image name, and a `chmod` or
//! `utime` of an image all end here. Pushes of one name take turns, in the order they
//! started (tokio's mutex is fair): a push that began later never lands earlier, so the
//! last `close()` wins, even when an older writer's push at its last release was slow.
//! Whatever is pushed, the manifest is written last, so a failed push leaves the tag as it
//! was.
//!
//! The content of the last few pushes is kept a little while ([`Publisher::recent`]), so
//! that a `chmod` or `utime` right after the `close()` that pushed a file (`install`,
//! `shutil.copy2`, `cp -p` do both) publishes again from the mount's own copy instead of
//! fetching the bytes back.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reposure_registry::Registry;
use reposure_registry::digest::Digest;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names;
use reposure_registry::push::{Content, LocalFile, push_path};

use crate::inode::ImageName;
use crate::staged::Staged;

/// Past this many names with a turn table entry, entries nobody holds are dropped.
const TURNS_KEPT: usize = 1024;

/// How long a pushed file's content is kept for a follow-up `chmod` or `utime`: the tools
/// that do it do it at once.
const RECENT_KEEP: Duration = Duration::from_secs(30);

/// How many pushed files are kept, and how many bytes at most: enough for a tool working
/// through a tree in parallel, little enough that the spool's disk is not held up.
const RECENT_FILES: usize = 8;
const RECENT_BYTES: u64 = 1 << 30;

/// A pushed file's content, kept for a while.
struct Recent {
    name: ImageName,
    digest: Digest,
    staged: Arc<Staged>,
    at: Instant,
}

/// Pushes staged content under image names, one push per name at a time.
pub struct Publisher {
    registry: Arc<dyn Registry>,
    format: PushFormat,
    /// Where an archive being pushed is decompressed.
    spool_dir: PathBuf,
    turns: Mutex<HashMap<ImageName, Weak<tokio::sync::Mutex<()>>>>,
    recent: Mutex<VecDeque<Recent>>,
}

impl Publisher {
    pub fn new(registry: Arc<dyn Registry>, format: PushFormat, spool_dir: PathBuf) -> Self {
        Self {
            registry,
            format,
            spool_dir,
            turns: Mutex::default(),
            recent: Mutex::default(),
        }
    }

    /// The content of `name` as pushed moments ago, if its push made `digest`.
    pub fn recent(&self, name: &ImageName, digest: &Digest) -> Option<Arc<Staged>> {
        let mut recent = self.recent.lock().expect("lock");
        recent.retain(|r| r.at.elapsed() < RECENT_KEEP);
        recent
            .iter()
            .find(|r| &r.name == name && &r.digest == digest)
            .map(|r| r.staged.clone())
    }

    fn remember(&self, name: &ImageName, digest: &Digest, staged: &Arc<Staged>) {
        let mut recent = self.recent.lock().expect("lock");
        recent.retain(|r| r.at.elapsed() < RECENT_KEEP && &r.name != name);
        recent.push_back(Recent {
            name: name.clone(),
            digest: digest.clone(),
            staged: staged.clone(),
            at: Instant::now(),
        });
        while recent.len() > RECENT_FILES
            || recent.iter().map(|r| r.staged.size()).sum::<u64>() > RECENT_BYTES
        {
            recent.pop_front();
        }
    }

    /// The turn of `name`: held for the length of one push.
    fn turn(&self, name: &ImageName) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().expect("lock");
        if let Some(turn) = turns.get(name).and_then(Weak::upgrade) {
            return turn;
        }
        if turns.len() >= TURNS_KEPT {
            turns.retain(|_, turn| turn.strong_count() > 0);
        }
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        turns.insert(name.clone(), Arc::downgrade(&turn));
        turn
    }

    /// Pushes `staged` as `name` (an image archive as the image it holds, anything else as
    /// a single-file image with the staged mode and time); answers once the manifest is
    /// committed.
    pub async fn publish(
        &self,
        name: &ImageName,
        staged: &Arc<Staged>,
    ) -> reposure_registry::Result<Digest> {
        let tag = name
            .tag()
            .expect("only tags are written: digest names are refused before");
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        let file = LocalFile {
            path: &staged.path(),
            file_name: names::base_name(&name.repository).to_owned(),
            format: self.format,
            created: None,
            attributes: staged.attributes(),
            content: Content::Detect,
            scratch_dir: &self.spool_dir,
            progress: None,
        };
        let digest = push_path(self.registry.as_ref(), &name.repository, tag, file).await?;
        self.remember(name, &digest, staged);
        Ok(digest)
    }
}
