//! A broken or hostile registry cannot blind, hang or bloat the mount: against
//! [`HostileRegistry`], the mount stays up, lists what is valid, fails each bad object
//! within the bound its timeout gives with a log line that says why, and keeps its memory
//! budget. One RELIABILITY.md case per class.

use std::fs;
use std::time::{Duration, Instant};

use reposure_tests::contract;
use reposure_tests::hostile::{BAD_NAMES, GIANT_TAGS, HostileRegistry};
use reposure_tests::mount::Mount;
use reposure_tests::posix::{errno_of, names};
use reposure_tests::process::{self, pids_of};
use reposure_tests::reliability::{Category, Row, Tally};

/// How long the registry may stay silent in these mounts (the mount's `timeout=`).
const TIMEOUT: u64 = 2;

fn mount(registry: &HostileRegistry) -> Mount {
    Mount::new(&registry.url(), &[&format!("timeout={TIMEOUT}")])
}

/// The peak resident memory of the mount's daemon, in KiB.
fn peak_rss_kib(mount: &Mount) -> u64 {
    let root = mount.root().to_str().unwrap().to_owned();
    process::peak_rss_kib(pids_of("reposure-mount", &[&root])[0])
}

/// A catalog and a tag list holding names that cannot be file names (`/`, empty, `.`,
/// `..`, too long, a newline, a NUL, upper case in a repository) and duplicates: the good
/// names list, the bad ones are left out with one warning per listing.
#[test]
fn bad_names_are_left_out_and_the_rest_lists() {
    let registry = HostileRegistry::start();
    let mount = mount(&registry);
    let tally = Tally::default();
    // Two bad inputs: the catalog and the tag list.
    let root = tally.input(|| names(mount.root()));
    assert!(root.len() < 20, "{} names at the root", root.len());
    assert_eq!(
        root,
        [
            "big",
            "endless",
            "giant-manifest",
            "good",
            "longer",
            "loop",
            "mismatch",
            "trickle"
        ]
    );
    assert_eq!(tally.input(|| names(&mount.path("good"))), ["a:v1", "a:v2"]);
    assert_eq!(
        tally
            .operation(|| fs::read(mount.path("good/a:v2")))
            .unwrap(),
        b"good v2"
    );
    // Listed again: no second warning for the same listing.
    tally.operation(|| names(&mount.path("good")));
    let log = mount.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot be file names"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("listing=\"the catalog\"") && w.contains("skipped=9")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("listing=\"good/a\"") && w.contains("skipped=8")),
        "{warnings:?}"
    );
    // The example is shown escaped (Debug-quoted).
    assert!(
        warnings.iter().all(|w| BAD_NAMES
            .iter()
            .any(|bad| w.contains(&format!("example={bad:?}")))),
        "{warnings:?}"
    );
    Row::new(
        "input.registry-bad-names",
        Category::BadInput,
        "a catalog and a tag list with names that cannot be file names (/, empty, ., .., too long, newline, NUL, upper case) and duplicates",
        "ls lists every valid name; the bad ones are left out with one warning per listing that counts them and shows one, escaped",
        "bad_names_are_left_out_and_the_rest_lists",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["tree.bad-names"]);
}

/// Reads a hostile object through the mount: the errno, the time it took, and the log.
fn read_fails(mount: &Mount, name: &str, tally: &Tally) -> (i32, Duration) {
    let started = Instant::now();
    let errno = errno_of(tally.input(|| fs::read(mount.path(name))));
    (errno, started.elapsed())
}

/// Blobs that ignore `Range` and never end, or run far past their descriptor: the read
/// fails with EIO at the first byte past what was declared, in well under the timeout,
/// having made the registry send little, and the log says the blob is longer than
/// declared.
#[test]
fn endless_and_over_long_blobs_fail_at_the_declared_size() {
    let registry = HostileRegistry::start();
    let mount = mount(&registry);
    let tally = Tally::default();
    for name in ["endless", "longer"] {
        let before = registry.bytes_sent();
        let (errno, took) = read_fails(&mount, name, &tally);
        assert_eq!(errno, libc::EIO, "{name}");
        assert!(took < Duration::from_secs(TIMEOUT), "{name} took {took:?}");
        let sent = registry.bytes_sent() - before;
        assert!(sent < 32 << 20, "{name}: the registry sent {sent} bytes");
    }
    assert!(
        mount.log().contains("longer than its declared"),
        "{}",
        mount.log()
    );
    assert_eq!(
        names(&mount.path("good")),
        ["a:v1", "a:v2"],
        "the mount is still up"
    );
    Row::new(
        "input.registry-endless-blob",
        Category::BadInput,
        "layers of 10 KiB whose blobs ignore Range and never end, or are 256 MiB long",
        "each read fails with EIO at the first byte past the declared size, within a second, the log says longer than declared, and the mount stays up",
        "endless_and_over_long_blobs_fail_at_the_declared_size",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.hostile-registry"]);
}

/// A manifest that trickles (a byte every 200 ms, never silent for the timeout) fails at
/// its deadline: the timeout plus what its declared size takes at the least rate.
#[test]
fn a_trickling_body_fails_at_its_deadline() {
    let registry = HostileRegistry::start();
    let mount = mount(&registry);
    let tally = Tally::default();
    let (errno, took) = read_fails(&mount, "trickle", &tally);
    assert_eq!(errno, libc::EIO);
    assert!(
        took >= Duration::from_secs(TIMEOUT) && took < Duration::from_secs(TIMEOUT + 3),
        "took {took:?}"
    );
    assert!(mount.log().contains("deadline"), "{}", mount.log());
    Row::new(
        "input.registry-trickling-body",
        Category::BadInput,
        "a manifest sent one byte every 200 ms (never silent for the 2 s timeout), with an honest Content-Length",
        "the lookup fails with EIO at the deadline (the timeout plus the declared size at 64 KiB/s), the log says so",
        "a_trickling_body_fails_at_its_deadline",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.hostile-registry"]);
}

/// A 64 MiB manifest, a blob that redirects to itself, and a blob that is not what its
/// digest says: each fails with EIO within the bound, the log says which.
#[test]
fn giant_manifests_redirect_loops_and_digest_mismatches_fail_cleanly() {
    let registry = HostileRegistry::start();
    let mount = mount(&registry);
    let tally = Tally::default();
    for (name, says) in [
        ("giant-manifest", "larger than 4 MiB"),
        ("loop", "redirect"),
        ("mismatch", "digest"),
    ] {
        let (errno, took) = read_fails(&mount, name, &tally);
        assert_eq!(errno, libc::EIO, "{name}");
        assert!(
            took < Duration::from_secs(TIMEOUT + 3),
            "{name} took {took:?}"
        );
        assert!(mount.log().contains(says), "{name}: {}", mount.log());
    }
    assert_eq!(
        names(&mount.path("good")),
        ["a:v1", "a:v2"],
        "the mount is still up"
    );
    Row::new(
        "input.registry-bad-objects",
        Category::BadInput,
        "a 64 MiB manifest, a blob that redirects to itself, a blob that is not what its digest says",
        "each fails with EIO within the timeout, the log names the manifest limit, the redirects and the digest; the mount stays up",
        "giant_manifests_redirect_loops_and_digest_mismatches_fail_cleanly",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.hostile-registry"]);
}

/// A repository of 200,000 tags lists whole and in order within the mount's memory
/// budget (128 MiB); what an entry costs is measured.
#[test]
fn two_hundred_thousand_tags_list_within_the_memory_budget() {
    let registry = HostileRegistry::start();
    let mount = Mount::new(&registry.url(), &["metadata_ttl=300"]);
    let tally = Tally::default();
    tally.operation(|| names(&mount.path("good")));
    let before = peak_rss_kib(&mount);
    let started = Instant::now();
    let listed = tally.operation(|| names(&mount.path("big")));
    let cold = started.elapsed();
    assert!(listed.len() == GIANT_TAGS, "{} listed", listed.len());
    assert_eq!(listed[0], "giant:t000000");
    assert_eq!(
        listed[GIANT_TAGS - 1],
        format!("giant:t{:06}", GIANT_TAGS - 1)
    );
    let started = Instant::now();
    let again = tally.operation(|| names(&mount.path("big"))).len();
    assert!(again == GIANT_TAGS, "{again} listed again");
    let warm = started.elapsed();
    let peak = peak_rss_kib(&mount);
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    let per_entry = (peak.saturating_sub(before) * 1024) / GIANT_TAGS as u64;
    eprintln!(
        "200,000 tags: ls cold {cold:?}, warm {warm:?}; peak RSS {} MiB (was {} MiB before listing): {per_entry} bytes per entry",
        peak / 1024,
        before / 1024
    );
    Row::new(
        "load.giant-tag-list",
        Category::Load,
        "a repository with 200,000 tags (200 pages with Link headers), listed twice",
        &format!(
            "all listed in order; ls {:.1} s cold, {:.1} s warm; the mount's peak RSS {} MiB ({} bytes an entry over the {} MiB before)",
            cold.as_secs_f32(),
            warm.as_secs_f32(),
            peak / 1024,
            per_entry,
            before / 1024
        ),
        "two_hundred_thousand_tags_list_within_the_memory_budget",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["tree.sorted"]);
}
