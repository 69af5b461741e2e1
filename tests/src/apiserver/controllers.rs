//! The cluster's controllers over the emulated store, as kube-controller-manager runs them:
//! the Deployment controller, the ReplicaSet controller and the garbage collector.
//!
//! They are level-triggered: every [`TICK`] each looks at the whole store and moves it one
//! step towards what the objects ask for, writing only what changes (so a watch sees the
//! same events a cluster's would, not a write per tick).
//!
//! * Deployments: one ReplicaSet per pod template, named `DEPLOYMENT-HASH` and labelled
//!   `pod-template-hash`; a changed template makes a new one and scales the old ones to
//!   zero — with `Recreate`, the new one is made only once every old pod is gone; otherwise
//!   the old ones scale down once the new one is ready. Status: `replicas`,
//!   `readyReplicas`, `availableReplicas` (ready, as `minReadySeconds` is 0),
//!   `updatedReplicas`, `observedGeneration` and the `Available` condition.
//! * ReplicaSets: pods `RS-xxxxx` from the template, owned by the ReplicaSet, until as
//!   many are alive (not being deleted) as it asks for; extra ones are deleted. A deleted
//!   pod is replaced at once, while it still terminates, as in a cluster.
//! * Garbage collection (background propagation): an object none of whose owners exists
//!   any more is deleted; a pod gracefully (the kubelet finishes it).
//!
//! Not emulated: RollingUpdate's surge and unavailability budgets, `minReadySeconds`,
//! progress deadlines, collision counts, foreground and orphan propagation, finalizers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::State;
use super::store::Store;

/// How often the controllers look at the store.
const TICK: Duration = Duration::from_millis(100);

pub(super) async fn run(state: Arc<State>) {
    loop {
        {
            let mut objects = state.objects.lock().unwrap();
            collect_garbage(&mut objects);
            deployments(&mut objects);
            replica_sets(&mut objects);
        }
        tokio::time::sleep(TICK).await;
    }
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn uid(object: &Value) -> &str {
    text(object, "/metadata/uid")
}

fn is_terminating(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

fn owned_by(object: &Value, owner_uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|owners| owners.iter().any(|o| o["uid"] == owner_uid))
}

pub(super) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A controller owner reference to `owner`.
fn controller_reference(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
}

/// The objects at paths of one resource (`/deployments/`), with their paths.
fn of_resource(objects: &Store, resource: &str) -> Vec<(String, Value)> {
    let marker = format!("/{resource}/");
    let mut found: Vec<(String, Value)> = objects
        .all()
        .filter(|(path, _)| path.contains(&marker))
        .map(|(path, object)| (path.clone(), object.clone()))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn collect_garbage(objects: &mut Store) {
    let uids: HashSet<String> = objects.all().map(|(_, o)| uid(o).to_owned()).collect();
    let orphans: Vec<String> = objects
        .all()
        .filter(|(_, object)| {
            object["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|owners| {
                    !owners.is_empty()
                        && owners
                            .iter()
                            .all(|o| !uids.contains(o["uid"].as_str().unwrap_or("")))
                })
        })
        .map(|(path, _)| path.clone())
        .collect();
    for path in orphans {
        if path.contains("/pods/") {
            objects.mark_deleted(&path);
        } else {
            objects.remove(&path);
        }
    }
}

/// A short digest of a pod template, in the alphabet Kubernetes uses for it (no vowels).
fn template_hash(template: &Value) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(template.to_string().as_bytes());
    digest[..10]
        .iter()
        .map(|b| SAFE[*b as usize % SAFE.len()] as char)
        .collect()
}

fn replicas(object: &Value) -> i64 {
    object["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// Writes `object` with `status` if that changes it.
fn write_status(objects: &mut Store, path: &str, mut object: Value, status: Value) {
    if object["status"] != status {
        object["status"] = status;
        objects.write(path, object);
    }
}

fn deployments(objects: &mut Store) {
    for (path, deployment) in of_resource(objects, "deployments") {
        let namespace = text(&deployment, "/metadata/namespace").to_owned();
        let name = text(&deployment, "/metadata/name").to_owned();
        let hash = template_hash(&deployment["spec"]["template"]);
        let current_name = format!("{name}-{hash}");
        let wanted = replicas(&deployment);
        let rs_collection = format!("/apis/apps/v1/namespaces/{namespace}/replicasets");
        let owned: Vec<Value> = objects
            .list(&rs_collection)
            .filter(|rs| owned_by(rs, uid(&deployment)))
            .cloned()
            .collect();
        let pods: Vec<Value> = objects
            .list(&format!("/api/v1/namespaces/{namespace}/pods"))
            .cloned()
            .collect();
        let pods_of =
            |rs: &Value| -> Vec<&Value> { pods.iter().filter(|p| owned_by(p, uid(rs))).collect() };
        let current = owned
            .iter()
            .find(|rs| text(rs, "/metadata/name") == current_name);
        let old: Vec<&Value> = owned
            .iter()
            .filter(|rs| text(rs, "/metadata/name") != current_name)
            .collect();
        let recreate = text(&deployment, "/spec/strategy/type") == "Recreate";
        let current_ready = current.map_or(0, |rs| {
            pods_of(rs)
                .iter()
                .filter(|p| is_ready(p) && !is_terminating(p))
                .count() as i64
        });
        if recreate || current_ready >= wanted {
            for rs in &old {
                if replicas(rs) != 0 {
                    let mut scaled = (*rs).clone();
                    scaled["spec"]["replicas"] = json!(0);
                    objects.write(
                        &format!("{rs_collection}/{}", text(rs, "/metadata/name")),
                        scaled,
                    );
                }
            }
        }
        let old_pods_remain = old.iter().any(|rs| !pods_of(rs).is_empty());
        match current {
            None if recreate && old_pods_remain => {}
            None => {
                let mut template = deployment["spec"]["template"].clone();
                template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = deployment["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let replica_set = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": current_name, "namespace": namespace,
                                 "labels": template["metadata"]["labels"],
                                 "ownerReferences": controller_reference(&deployment, "apps/v1", "Deployment")},
                    "spec": {"replicas": wanted, "selector": selector, "template": template}
                });
                objects.write(&format!("{rs_collection}/{current_name}"), replica_set);
            }
            Some(rs) if replicas(rs) != wanted => {
                let mut scaled = rs.clone();
                scaled["spec"]["replicas"] = json!(wanted);
                objects.write(&format!("{rs_collection}/{current_name}"), scaled);
            }
            Some(_) => {}
        }
        let alive: Vec<&Value> = owned
            .iter()
            .flat_map(&pods_of)
            .filter(|p| !is_terminating(p))
            .collect();
        let ready = alive.iter().filter(|p| is_ready(p)).count() as i64;
        let updated = current.map_or(0, |rs| {
            pods_of(rs).iter().filter(|p| !is_terminating(p)).count()
        });
        let available = ready >= wanted;
        let status = json!({
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": alive.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": updated,
            "conditions": [{"type": "Available", "status": if available { "True" } else { "False" },
                            "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}]
        });
        write_status(objects, &path, deployment, status);
    }
}

fn replica_sets(objects: &mut Store) {
    for (path, replica_set) in of_resource(objects, "replicasets") {
        let namespace = text(&replica_set, "/metadata/namespace").to_owned();
        let name = text(&replica_set, "/metadata/name").to_owned();
        let pod_collection = format!("/api/v1/namespaces/{namespace}/pods");
        let alive: Vec<Value> = objects
            .list(&pod_collection)
            .filter(|p| owned_by(p, uid(&replica_set)) && !is_terminating(p))
            .cloned()
            .collect();
        let wanted = replicas(&replica_set).max(0) as usize;
        for _ in alive.len()..wanted {
            let template = &replica_set["spec"]["template"];
            let pod_name = format!("{name}-{}", pod_suffix());
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace,
                             "labels": template["metadata"]["labels"],
                             "annotations": template["metadata"]["annotations"],
                             "ownerReferences": controller_reference(&replica_set, "apps/v1", "ReplicaSet")},
                "spec": template["spec"],
                "status": {"phase": "Pending"}
            });
            objects.write(&format!("{pod_collection}/{pod_name}"), pod);
        }
        for extra in alive.iter().skip(wanted) {
            objects.mark_deleted(&format!(
                "{pod_collection}/{}",
                text(extra, "/metadata/name")
            ));
        }
        let ready = alive.iter().take(wanted).filter(|p| is_ready(p)).count();
        let status = json!({
            "observedGeneration": replica_set["metadata"]["generation"],
            "replicas": alive.len().min(wanted),
            "readyReplicas": ready,
            "availableReplicas": ready
        });
        write_status(objects, &path, replica_set, status);
    }
}

/// Five characters, as the ReplicaSet controller's generated pod names end.
fn pod_suffix() -> String {
    use rand::Rng;
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| SAFE[rng.random_range(0..SAFE.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(template_annotation: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "ns", "generation": 1},
               "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"},
                                                  "annotations": {"digest": template_annotation}},
                                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pods(objects: &Store) -> Vec<Value> {
        objects
            .list("/api/v1/namespaces/ns/pods")
            .cloned()
            .collect()
    }

    fn step(objects: &mut Store) {
        collect_garbage(objects);
        deployments(objects);
        replica_sets(objects);
    }

    /// The kubelet's part: a pod being deleted goes once its containers stopped.
    fn finish_deletions(objects: &mut Store) {
        for pod in pods(objects) {
            if is_terminating(&pod) {
                objects.remove(&format!(
                    "/api/v1/namespaces/ns/pods/{}",
                    pod["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
    }

    #[test]
    fn a_recreate_rollout_replaces_the_pod_after_the_old_one_is_gone() {
        let mut objects = Store::default();
        let path = "/apis/apps/v1/namespaces/ns/deployments/web";
        objects.write(path, deployment("one"));
        step(&mut objects);
        step(&mut objects);
        let first = pods(&objects);
        assert_eq!(first.len(), 1);
        assert!(
            first[0]["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("web-")
        );
        assert_eq!(first[0]["metadata"]["annotations"]["digest"], "one");

        let mut changed = deployment("two");
        changed["metadata"]["uid"] = objects.get(path).unwrap()["metadata"]["uid"].clone();
        objects.write(path, changed);
        step(&mut objects);
        step(&mut objects);
        // Recreate: the old pod is being deleted, and no new one starts until it is gone.
        assert!(
            pods(&objects).iter().all(is_terminating),
            "{:?}",
            pods(&objects)
        );
        finish_deletions(&mut objects);
        step(&mut objects);
        step(&mut objects);
        let second = pods(&objects);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0]["metadata"]["annotations"]["digest"], "two");

        // A deleted pod is replaced while it terminates.
        let name = second[0]["metadata"]["name"].as_str().unwrap().to_owned();
        objects.mark_deleted(&format!("/api/v1/namespaces/ns/pods/{name}"));
        step(&mut objects);
        assert_eq!(pods(&objects).len(), 2);

        // The Deployment deleted: everything it owned goes.
        objects.remove(path);
        for _ in 0..3 {
            step(&mut objects);
            finish_deletions(&mut objects);
        }
        assert!(pods(&objects).is_empty());
        assert_eq!(
            objects
                .list("/apis/apps/v1/namespaces/ns/replicasets")
                .count(),
            0
        );
    }
}
