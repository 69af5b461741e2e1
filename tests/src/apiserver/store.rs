//! The emulated API server's storage: each object at its API path, stamped with a resource
//! version from one counter (as etcd's revision), and every change kept in order so that a
//! watch can replay what happened after the version it names.
//!
//! What the server owns is set here, whoever writes: `metadata.resourceVersion` on every
//! write, and `uid` and `creationTimestamp` when an object is made. The history is never
//! compacted (a test is short), so a watch never gets 410 Gone.

use std::collections::HashMap;

use serde_json::{Value, json};

/// One change, as a watch event carries it.
#[derive(Clone)]
pub struct Change {
    pub revision: u64,
    path: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (for `DELETED`, its last state).
    pub object: Value,
}

pub struct Store {
    objects: HashMap<String, Value>,
    revision: u64,
    history: Vec<Change>,
    revisions: tokio::sync::watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            revision: 0,
            history: Vec::new(),
            revisions: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Whether `path` is an object directly in `collection`.
fn in_collection(path: &str, collection: &str) -> bool {
    path.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

impl Store {
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    /// The newest resource version.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Told each new resource version.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.objects.keys()
    }

    /// Every object (path and object).
    pub fn all(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.objects.iter()
    }

    /// The objects of a collection (`/api/v1/namespaces/NS/pods`), by name.
    pub fn list<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        let mut paths: Vec<&String> = self
            .objects
            .keys()
            .filter(|path| in_collection(path, collection))
            .collect();
        paths.sort();
        paths.into_iter().map(|path| &self.objects[path])
    }

    /// The changes to a collection's objects after resource version `since`, in order.
    pub fn changes_since<'a>(
        &'a self,
        since: u64,
        collection: &'a str,
    ) -> impl Iterator<Item = Change> + 'a {
        let first = self.history.partition_point(|c| c.revision <= since);
        self.history[first..]
            .iter()
            .filter(move |c| in_collection(&c.path, collection))
            .cloned()
    }

    fn record(&mut self, path: &str, kind: &'static str, object: Value) {
        self.history.push(Change {
            revision: self.revision,
            path: path.to_owned(),
            kind,
            object,
        });
        self.revisions.send_replace(self.revision);
    }

    /// Stores `object` at `path` with the next resource version; its uid and creation
    /// time are the previous object's, or new ones, unless it names them. Writing what is
    /// already there changes nothing, not even the version (as the API server skips no-op
    /// updates). Returns the object as stored.
    pub fn write(&mut self, path: &str, mut object: Value) -> Value {
        let previous = self.objects.get(path);
        let kept = |field: &str| {
            previous
                .map(|p| p["metadata"][field].clone())
                .filter(|v| !v.is_null())
        };
        let (uid, created, version) = (
            kept("uid").unwrap_or_else(|| json!(format!("uid-{}", self.revision + 1))),
            kept("creationTimestamp").unwrap_or_else(|| json!(now())),
            kept("resourceVersion"),
        );
        let metadata = &mut object["metadata"];
        if metadata["uid"].is_null() {
            metadata["uid"] = uid;
        }
        if metadata["creationTimestamp"].is_null() {
            metadata["creationTimestamp"] = created;
        }
        metadata["resourceVersion"] = version.unwrap_or(Value::Null);
        if previous == Some(&object) {
            return object;
        }
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.objects.insert(path.to_owned(), object.clone());
        self.record(path, kind, object.clone());
        object
    }

    /// Removes the object at `path`; returns its last state.
    pub fn remove(&mut self, path: &str) -> Option<Value> {
        let mut object = self.objects.remove(path)?;
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.record(path, "DELETED", object.clone());
        Some(object)
    }

    /// Marks the object at `path` as being deleted (`deletionTimestamp`), for whoever
    /// finishes the deletion (the kubelet, for a pod); returns it.
    pub fn mark_deleted(&mut self, path: &str) -> Option<Value> {
        let mut object = self.objects.get(path)?.clone();
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object = self.write(path, object);
        }
        Some(object)
    }
}

/// Now, as the API server writes times (RFC 3339, seconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_replay_a_collections_changes_after_a_version() {
        let mut store = Store::default();
        let pods = "/api/v1/namespaces/ns/pods";
        store.write(&format!("{pods}/a"), json!({"metadata": {"name": "a"}}));
        let after_a = store.revision();
        store.write(&format!("{pods}/b"), json!({"metadata": {"name": "b"}}));
        store.write(
            "/api/v1/namespaces/ns/secrets/s",
            json!({"metadata": {"name": "s"}}),
        );
        store.write(
            &format!("{pods}/a"),
            json!({"metadata": {"name": "a"}, "x": 1}),
        );
        store.remove(&format!("{pods}/b"));
        let kinds: Vec<(&str, String)> = store
            .changes_since(after_a, pods)
            .map(|c| {
                (
                    c.kind,
                    c.object["metadata"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("ADDED", "b".to_owned()),
                ("MODIFIED", "a".to_owned()),
                ("DELETED", "b".to_owned())
            ]
        );
        let uid = store.get(&format!("{pods}/a")).unwrap()["metadata"]["uid"].clone();
        assert_eq!(uid, "uid-1", "a uid is kept across writes");
        let revision = store.revision();
        store.write(
            &format!("{pods}/a"),
            json!({"metadata": {"name": "a"}, "x": 1}),
        );
        assert_eq!(store.revision(), revision, "a no-op write changes nothing");
        assert_eq!(store.list(pods).count(), 1);
    }
}
