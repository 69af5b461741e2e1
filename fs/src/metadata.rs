//! What the filesystem knows about the registry's names, and for how long it trusts it.
//!
//! The catalog, tag lists and resolved names are cached for `metadata_ttl` (1 s by
//! default), so a change made by another client shows within that time; a change made
//! through this mount drops what it changed at once. Local directories (made with `mkdir`
//! before anything was pushed into them) and hidden ones (removed with `rmdir`, which the
//! registry cannot do) live here too.
//!
//! A registry without a catalog (Docker Hub, GHCR, GitLab: `RegistryError::NoCatalog`)
//! still mounts: the catalog is then the repositories this mount knows, those named in
//! `repositories=` and those it has seen (resolved, listed or pushed), and a name that is
//! not an image is taken for a directory (the filesystem decides that at lookup), so that
//! a path the user names reaches its repository.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reposure_registry::RegistryError;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::names;
use reposure_registry::operations::{ImageInfo, Registry};

use crate::errno::FsResult;
use crate::inode::ImageName;
use crate::namespace;
use crate::ttl_cache::TtlCache;

/// The cached view of the registry.
pub struct Metadata {
    registry: Arc<dyn Registry>,
    catalog: TtlCache<(), Arc<Vec<String>>>,
    tags: TtlCache<String, Arc<Vec<String>>>,
    resolved: TtlCache<ImageName, ImageInfo>,
    /// Names the registry said do not exist: `cp` looks a name up and then creates it,
    /// and the second question would get the same answer.
    missing: TtlCache<ImageName, String>,
    local_dirs: Mutex<BTreeSet<String>>,
    hidden_dirs: Mutex<HashSet<String>>,
    ttl: Duration,
    /// Repositories named by the user or seen through this mount: the catalog of a
    /// registry that has none.
    known: Mutex<BTreeSet<String>>,
    /// Set once the registry said it has no catalog.
    without_catalog: AtomicBool,
    /// The platform picked from multi-platform images.
    platform: Option<Platform>,
    /// Listings already warned about for names that cannot be shown (one warning each).
    warned: Mutex<HashSet<String>>,
}

/// Keeps the names `listable` accepts, sorted and without duplicates; says once per
/// listing how many it left out, with an example (escaped), so one bad name never hides
/// the good ones.
fn listable(
    names: Vec<String>,
    listable: impl Fn(&str) -> bool,
    listing: &str,
    warned: &Mutex<HashSet<String>>,
) -> Vec<String> {
    let before = names.len();
    let mut example = None;
    let mut kept: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let ok = listable(name);
            if !ok && example.is_none() && !name.is_empty() {
                example = Some(name.chars().take(80).collect::<String>());
            }
            ok
        })
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let skipped = before - kept.len();
    if skipped > 0 && warned.lock().expect("lock").insert(listing.to_owned()) {
        tracing::warn!(
            listing,
            skipped,
            example = ?example.unwrap_or_default(),
            "the registry listed names that cannot be file names or are listed twice; they are left out"
        );
    }
    kept
}

impl Metadata {
    pub fn new(
        registry: Arc<dyn Registry>,
        ttl: Duration,
        known: &[String],
        platform: Option<Platform>,
    ) -> Self {
        Self {
            registry,
            catalog: TtlCache::new(ttl),
            tags: TtlCache::new(ttl),
            resolved: TtlCache::new(ttl),
            missing: TtlCache::new(ttl),
            local_dirs: Mutex::default(),
            hidden_dirs: Mutex::default(),
            ttl,
            known: Mutex::new(known.iter().cloned().collect()),
            without_catalog: AtomicBool::new(false),
            platform,
            warned: Mutex::default(),
        }
    }

    /// Whether a name that is no image may stand for a directory: the registry has no
    /// catalog (known after the first listing) and `repository` is not one this mount
    /// knows (a known repository's bare name is a file to create, not a namespace).
    pub fn may_be_namespace(&self, repository: &str) -> bool {
        self.without_catalog.load(Ordering::Relaxed)
            && !self.known.lock().expect("lock").contains(repository)
    }

    /// Remembers a repository seen through this mount, and lists it at once (the catalog
    /// is updated in place rather than fetched again).
    fn seen(&self, repository: &str) {
        if !self
            .known
            .lock()
            .expect("lock")
            .insert(repository.to_owned())
        {
            return;
        }
        self.catalog.update(&(), |catalog| {
            if let Err(at) = catalog.binary_search_by(|known| known.as_str().cmp(repository)) {
                Arc::make_mut(catalog).insert(at, repository.to_owned());
            }
        });
    }

    /// Every repository.
    pub async fn catalog(&self) -> FsResult<Arc<Vec<String>>> {
        if let Some(catalog) = self.catalog.get(&()) {
            return Ok(catalog);
        }
        let catalog = match self.registry.list_repositories().await {
            Ok(repositories) => {
                let mut repositories = listable(
                    repositories,
                    namespace::listable_repository,
                    "the catalog",
                    &self.warned,
                );
                // Repositories the user named show even where the catalog leaves them out.
                repositories.extend(self.known.lock().expect("lock").iter().cloned());
                repositories.sort_unstable();
                repositories.dedup();
                repositories
            }
            Err(RegistryError::NoCatalog(reason)) => {
                if !self.without_catalog.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %reason,
                        "the registry has no catalog: directories list the repositories named in repositories= and those used through this mount; any other repository is reached by naming its path"
                    );
                }
                self.known.lock().expect("lock").iter().cloned().collect()
            }
            Err(e) => return Err(e.into()),
        };
        let catalog = Arc::new(catalog);
        self.catalog.insert((), catalog.clone());
        Ok(catalog)
    }

    /// A repository's tags.
    pub async fn tags(&self, repository: &str) -> FsResult<Arc<Vec<String>>> {
        if let Some(tags) = self.tags.get(&repository.to_owned()) {
            return Ok(tags);
        }
        let tags = Arc::new(listable(
            self.registry.list_tags(repository).await?,
            |tag| namespace::listable_tag(repository, tag),
            repository,
            &self.warned,
        ));
        self.tags.insert(repository.to_owned(), tags.clone());
        Ok(tags)
    }

    /// What a name resolves to now.
    pub async fn resolve(&self, name: &ImageName) -> FsResult<ImageInfo> {
        self.resolve_fresh(name).await.map(|(info, _)| info)
    }

    /// What a name resolves to now, and how much longer that answer may be trusted: the
    /// kernel may keep the name pointing at this version for that long, and no longer, so a
    /// change elsewhere shows within `metadata_ttl` however the two caches line up.
    pub async fn resolve_fresh(&self, name: &ImageName) -> FsResult<(ImageInfo, Duration)> {
        if let Some(fresh) = self.resolved.get_fresh(name) {
            return Ok(fresh);
        }
        if let Some(reason) = self.missing.get(name) {
            return Err(RegistryError::NotFound(reason).into());
        }
        match self
            .registry
            .resolve(&name.repository, &name.reference, self.platform.as_ref())
            .await
        {
            Ok(info) => {
                self.seen(&name.repository);
                self.resolved.insert(name.clone(), info.clone());
                Ok((info, self.ttl))
            }
            Err(RegistryError::NotFound(reason)) => {
                self.missing.insert(name.clone(), reason.clone());
                Err(RegistryError::NotFound(reason).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets what a change to `name` made stale. The catalog is not refetched: a change
    /// through this mount can only add `name`'s repository to it (the registry keeps a
    /// repository whose last tag is gone), so it is added in place. Refetching it after
    /// every push made each lookup of `cp -r` list the whole registry.
    pub fn invalidate(&self, name: &ImageName) {
        self.seen(&name.repository);
        self.tags.remove(&name.repository);
        self.resolved.remove(name);
        self.missing.remove(name);
    }

    /// Records that `repository` now has an image, so its directories are real.
    pub fn published(&self, repository: &str) {
        let mut local = self.local_dirs.lock().expect("lock");
        let mut hidden = self.hidden_dirs.lock().expect("lock");
        let mut path = repository;
        while !path.is_empty() {
            let (parent, _) = names::parent_and_base(path);
            local.remove(parent);
            hidden.remove(parent);
            path = parent;
        }
    }

    /// Whether `path` is a directory.
    pub async fn is_dir(&self, path: &str) -> FsResult<bool> {
        if path.is_empty() || self.local_dirs.lock().expect("lock").contains(path) {
            return Ok(true);
        }
        if self.hidden_dirs.lock().expect("lock").contains(path) {
            return Ok(false);
        }
        Ok(namespace::is_catalog_dir(path, &self.catalog().await?))
    }

    /// The sub-directories of `dir` that exist only here, and those hidden by `rmdir`.
    pub fn adjust_sub_dirs(&self, dir: &str, sub_dirs: &mut BTreeSet<String>) {
        let hidden = self.hidden_dirs.lock().expect("lock");
        sub_dirs.retain(|d| !hidden.contains(&namespace::join(dir, d)));
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        for local in self.local_dirs.lock().expect("lock").iter() {
            if let Some(name) = local.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                sub_dirs.insert(name.to_owned());
            }
        }
    }

    /// Makes a local directory (undoing an earlier `rmdir` of it).
    pub fn make_dir(&self, path: &str) {
        self.hidden_dirs.lock().expect("lock").remove(path);
        self.local_dirs
            .lock()
            .expect("lock")
            .insert(path.to_owned());
    }

    /// Local directories at or below `from` now live at `to` (a directory was renamed).
    pub fn move_dirs(&self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved = |path: &String| {
            (path == from || path.starts_with(&prefix))
                .then(|| format!("{to}{}", &path[from.len()..]))
        };
        let mut local = self.local_dirs.lock().expect("lock");
        let renamed: Vec<String> = local.iter().filter_map(moved).collect();
        local.retain(|path| moved(path).is_none());
        local.extend(renamed);
        // The old path is gone as a directory; its repositories moved.
        self.hidden_dirs
            .lock()
            .expect("lock")
            .insert(from.to_owned());
        self.catalog.remove(&());
    }

    /// Removes a directory from view.
    pub fn remove_dir(&self, path: &str) {
        self.local_dirs.lock().expect("lock").remove(path);
        self.hidden_dirs
            .lock()
            .expect("lock")
            .insert(path.to_owned());
    }
}
