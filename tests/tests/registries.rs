//! The harness's registries that behave like the public ones, checked with peers only
//! (skopeo, curl; no Reposure): the reference registry with token auth against the test
//! token server, and the proxy's blob redirects to another origin, 429s with
//! `Retry-After` and missing catalog.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use reposure_tests::proxy::{BlobRedirect, Class, Fault, FaultProxy};
use reposure_tests::registry::TokenRegistry;
use reposure_tests::{random_bytes, sha256_hex};

const USER: &str = "alice";
const PASSWORD: &str = "wonder-land-7";

/// Runs a peer for at most 30 s, with an empty auth file so no credential of this
/// machine is used.
fn peer(work: &Path, program: &str, args: &[&str]) -> Output {
    let auth = work.join("auth.json");
    if !auth.exists() {
        fs::write(&auth, r#"{"auths":{}}"#).unwrap();
    }
    Command::new("timeout")
        .arg("30")
        .arg(program)
        .args(args)
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("DOCKER_CONFIG", work)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An HTTP request with curl: (status, headers, body).
fn curl(work: &Path, args: &[&str]) -> (u16, String, Vec<u8>) {
    let headers = work.join("curl-headers");
    let body = work.join("curl-body");
    let mut all = vec![
        "-s",
        "-D",
        headers.to_str().unwrap(),
        "-o",
        body.to_str().unwrap(),
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    let status = ok(peer(work, "curl", &all), "curl");
    (
        status.trim().parse().expect("an HTTP status"),
        fs::read_to_string(&headers).unwrap_or_default(),
        fs::read(&body).unwrap_or_default(),
    )
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(body)))
}

/// A skopeo `dir:` image whose one layer is gzip of `content`; returns the layer.
fn dir_image(dir: &Path, content: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, content).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(content))]},
        "config": {}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": format!("sha256:{}", sha256_hex(&config))},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": format!("sha256:{}", sha256_hex(&layer))}]
    }))
    .unwrap();
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(sha256_hex(&config)), &config).unwrap();
    fs::write(dir.join(sha256_hex(&layer)), &layer).unwrap();
    fs::write(dir.join("manifest.json"), manifest).unwrap();
    fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    layer
}

fn push_as_user(work: &Path, image: &Path, host: &str, reference: &str) {
    ok(
        peer(
            work,
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("dir:{}", image.display()),
                &format!("docker://{host}/{reference}"),
            ],
        ),
        "push with the user's credentials",
    );
}

/// The header and claims of a JWT, unverified.
fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let header = b64.decode(parts.next().unwrap()).unwrap();
    let claims = b64.decode(parts.next().unwrap()).unwrap();
    (json(&header), json(&claims))
}

/// skopeo pushes with the user's credentials and pulls anonymously; an anonymous push
/// and a wrong password are refused; the token server logged who asked for what; the
/// catalog needs the user's `registry:catalog:*`.
#[test]
fn token_registry_serves_users_and_anonymous_pulls() {
    let registry = TokenRegistry::start(&[(USER, PASSWORD)], true);
    let tokens = &registry.tokens;
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(200_000);
    let image = work.path().join("image");
    let layer = dir_image(&image, &content);

    push_as_user(work.path(), &image, &registry.host(), "smoke/app:v1");

    let pulled = work.path().join("pulled");
    ok(
        peer(
            work.path(),
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}/smoke/app:v1", registry.host()),
                &format!("dir:{}", pulled.display()),
            ],
        ),
        "anonymous pull",
    );
    assert_eq!(
        fs::read(pulled.join(sha256_hex(&layer))).unwrap(),
        layer,
        "the pulled layer"
    );

    for (creds, what) in [
        (None, "anonymous push"),
        (Some(format!("{USER}:wrong")), "push with a wrong password"),
    ] {
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        if let Some(creds) = &creds {
            args.extend(["--dest-creds", creds]);
        }
        let source = format!("dir:{}", image.display());
        let destination = format!("docker://{}/smoke/other:v1", registry.host());
        args.extend([source.as_str(), destination.as_str()]);
        let output = peer(work.path(), "skopeo", &args);
        assert!(!output.status.success(), "{what} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(
            stderr.contains("unauthorized") || stderr.contains("denied"),
            "{what}: {stderr}"
        );
    }

    let log = tokens.log();
    assert_eq!(tokens.requests(), log.len());
    assert!(
        log.iter().any(|r| r.account.as_deref() == Some(USER)
            && r.scopes == ["repository:smoke/app:pull,push"]
            && r.granted == ["repository:smoke/app:pull,push"]
            && r.status == 200),
        "the user's push token: {log:#?}"
    );
    assert!(
        log.iter().any(|r| r.account.is_none()
            && r.scopes == ["repository:smoke/app:pull"]
            && r.granted == ["repository:smoke/app:pull"]),
        "the anonymous pull token: {log:#?}"
    );
    assert!(
        log.iter().any(|r| r.account.is_none()
            && r.scopes == ["repository:smoke/other:pull,push"]
            && r.granted == ["repository:smoke/other:pull"]
            && r.status == 200),
        "the anonymous push asked for push and got pull only: {log:#?}"
    );
    assert!(
        log.iter().any(|r| r.status == 401),
        "the wrong password was refused: {log:#?}"
    );
    assert!(tokens.counts(&["repository:smoke/app:push,pull"]).get >= 1);

    // The catalog: the user's token lists it; an anonymous token lacks the scope.
    let catalog = format!("{}/v2/_catalog", registry.url());
    let realm = format!(
        "{}?service={}&scope=registry:catalog:*",
        tokens.realm(),
        tokens.service()
    );
    let (status, _, body) = curl(work.path(), &["-u", &format!("{USER}:{PASSWORD}"), &realm]);
    assert_eq!(status, 200);
    let token = json(&body)["token"].as_str().unwrap().to_owned();
    let (status, _, body) = curl(
        work.path(),
        &["-H", &format!("Authorization: Bearer {token}"), &catalog],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        json(&body)["repositories"],
        serde_json::json!(["smoke/app"])
    );
    let (status, _, body) = curl(work.path(), &[&realm]);
    assert_eq!(status, 200, "a partial grant is still 200");
    let anonymous = json(&body)["token"].as_str().unwrap().to_owned();
    let (status, headers, _) = curl(
        work.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {anonymous}"),
            &catalog,
        ],
    );
    assert_eq!(status, 401);
    assert!(
        headers.contains(r#"scope="registry:catalog:*""#)
            && headers.contains(r#"error="insufficient_scope""#),
        "{headers}"
    );
}

/// The token endpoint itself: the JWT's header and claims, 400 and 401, the OAuth2 POST
/// with a refresh token, and anonymous access switched off.
#[test]
fn token_endpoint_answers_get_post_and_refresh() {
    let registry = TokenRegistry::start(&[(USER, PASSWORD)], true);
    let tokens = &registry.tokens;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let realm = tokens.realm();
    let service = tokens.service().to_owned();
    let user = format!("{USER}:{PASSWORD}");

    let (status, _, body) = curl(
        w,
        &[
            "-u",
            &user,
            &format!(
                "{realm}?service={service}&scope=repository:a/b:pull&scope=repository:c:push&account={USER}&offline_token=true&client_id=test"
            ),
        ],
    );
    assert_eq!(status, 200);
    let answer = json(&body);
    assert_eq!(answer["token"], answer["access_token"]);
    assert_eq!(answer["expires_in"], 300);
    assert!(answer["issued_at"].as_str().unwrap().ends_with('Z'));
    assert!(answer["refresh_token"].is_string());
    let (header, claims) = jwt_parts(answer["token"].as_str().unwrap());
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], tokens.kid());
    assert_eq!(tokens.kid().len(), 59);
    assert_eq!(claims["iss"], tokens.issuer());
    assert_eq!(claims["sub"], USER);
    assert_eq!(claims["aud"], service, "aud is a string");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert!(claims["nbf"].is_u64() && claims["jti"].is_string());
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull"]},
            {"type": "repository", "name": "c", "actions": ["push"]}
        ])
    );

    for (args, expected) in [
        (vec![format!("{realm}?scope=repository:a:pull")], 400),
        (
            vec![format!("{realm}?service=other&scope=repository:a:pull")],
            400,
        ),
        (
            vec![
                "-u".into(),
                format!("{USER}:nope"),
                format!("{realm}?service={service}"),
            ],
            401,
        ),
        (
            vec![
                "-d".into(),
                format!(
                    "grant_type=password&username={USER}&password={PASSWORD}&service={service}"
                ),
                realm.clone(),
            ],
            400, // no client_id
        ),
        (
            vec![
                "-d".into(),
                format!(
                    "grant_type=password&username={USER}&password=nope&service={service}&client_id=t"
                ),
                realm.clone(),
            ],
            401,
        ),
        (
            vec![
                "-d".into(),
                format!(
                    "grant_type=refresh_token&refresh_token=forged&service={service}&client_id=t"
                ),
                realm.clone(),
            ],
            401,
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(w, &args).0, expected, "{args:?}");
    }

    // OAuth2: a password grant with a refresh token, then a refresh grant whose token
    // the registry accepts for a push (the upload opens).
    let scope = "repository:smoke/x:push,pull";
    let (status, _, body) = curl(
        w,
        &[
            "-d",
            &format!(
                "grant_type=password&username={USER}&password={PASSWORD}&service={service}&client_id=reposure-test&access_type=offline&scope={scope}"
            ),
            &realm,
        ],
    );
    assert_eq!(status, 200);
    let answer = json(&body);
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "repository:smoke/x:pull,push");
    let refresh = answer["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, body) = curl(
        w,
        &[
            "-d",
            &format!(
                "grant_type=refresh_token&refresh_token={refresh}&service={service}&client_id=reposure-test&scope={scope}"
            ),
            &realm,
        ],
    );
    assert_eq!(status, 200);
    let access = json(&body)["access_token"].as_str().unwrap().to_owned();
    let (status, _, body) = curl(
        w,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {access}"),
            &format!("{}/v2/smoke/x/blobs/uploads/", registry.url()),
        ],
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    assert_eq!(tokens.counts(&["repository:smoke/x:pull,push"]).post, 2);
    assert_eq!(tokens.counts(&["repository:smoke/x:pull,push"]).get, 0);

    // Anonymous pull, then anonymous access switched off.
    let pull = format!("{realm}?service={service}&scope=repository:smoke/x:pull");
    assert_eq!(curl(w, &[&pull]).0, 200);
    tokens.set_anonymous_pull(false);
    assert_eq!(curl(w, &[&pull]).0, 401);
    assert_eq!(curl(w, &["-u", &user, &pull]).0, 200);
    assert_eq!(tokens.counts(&["repository:smoke/x:pull"]).get, 3);
    assert_eq!(tokens.requests(), tokens.log().len());
}

/// Through the proxy: skopeo waits out the 429s, follows the blob redirects to the
/// storage origin (127.0.0.1, another port), dropping its `Authorization` there, and gets
/// the image; curl keeps `Range` across every redirect status and drops `Authorization`;
/// a client that keeps it is refused by the storage; the catalog is 404 UNSUPPORTED.
#[test]
fn proxy_redirects_blobs_rate_limits_and_hides_the_catalog() {
    let registry = TokenRegistry::start(&[(USER, PASSWORD)], true);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let content = random_bytes(300_000);
    let image = w.join("image");
    let layer = dir_image(&image, &content);
    push_as_user(w, &image, &registry.host(), "smoke/app:v1");

    let proxy = FaultProxy::start(registry.registry.port);
    proxy.redirect_blobs(Some(
        BlobRedirect::new(307).with_upstream_auth(registry.tokens.pull_authorization()),
    ));
    proxy.inject_times(Class::ManifestGet, Fault::RateLimited(1), 2);
    proxy.inject_times(Class::BlobGet, Fault::RateLimited(1), 1);
    proxy.catalog_unsupported(true);
    let proxy_host = format!("127.0.0.1:{}", proxy.port);

    let started = Instant::now();
    let pulled = w.join("pulled");
    ok(
        peer(
            w,
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{proxy_host}/smoke/app:v1"),
                &format!("dir:{}", pulled.display()),
            ],
        ),
        "pull through the proxy",
    );
    assert_eq!(fs::read(pulled.join(sha256_hex(&layer))).unwrap(), layer);
    assert_eq!(proxy.rate_limited(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "skopeo waited out Retry-After"
    );
    assert!(proxy.redirects() >= 2, "config and layer redirected");
    assert_eq!(proxy.storage_served(), proxy.redirects());
    assert_eq!(proxy.storage_refused(), 0);

    // curl with a bearer token: every redirect status, Range kept, Authorization dropped
    // for the other origin.
    let realm = format!(
        "{}?service={}&scope=repository:smoke/app:pull",
        registry.tokens.realm(),
        registry.tokens.service()
    );
    let token = json(&curl(w, &[&realm]).2)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Authorization: Bearer {token}");
    let blob = format!(
        "{}/v2/smoke/app/blobs/sha256:{}",
        proxy.url(),
        sha256_hex(&layer)
    );
    for status in [302, 303, 307, 308] {
        proxy.redirect_blobs(Some(
            BlobRedirect::new(status).with_upstream_auth(registry.tokens.pull_authorization()),
        ));
        let (code, headers, body) = curl(w, &["-L", "-H", &bearer, "-r", "1000-1999", &blob]);
        assert_eq!(code, 206, "{status}: {headers}");
        assert!(headers.contains(&format!(" {status} ")), "{headers}");
        assert_eq!(body, layer[1000..2000], "{status}");
    }
    assert_eq!(proxy.storage_refused(), 0);
    let (code, _, body) = curl(w, &["-L", "--location-trusted", "-H", &bearer, &blob]);
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("InvalidArgument"));
    assert_eq!(proxy.storage_refused(), 1);

    // A HEAD is not redirected.
    let (code, _, _) = curl(w, &["-I", "-H", &bearer, &blob]);
    assert_eq!(code, 200);

    let (code, _, body) = curl(w, &[&format!("{}/v2/_catalog", proxy.url())]);
    assert_eq!(code, 404);
    assert_eq!(json(&body)["errors"][0]["code"], "UNSUPPORTED");
    assert_eq!(proxy.catalog_refusals(), 1);
}

/// `inject_every`: every 2nd manifest GET is rate limited; curl (no retry) sees 200,
/// 429 with `Retry-After`, 200, 429.
#[test]
fn proxy_rate_limits_every_nth_request() {
    let registry = TokenRegistry::start(&[(USER, PASSWORD)], true);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = w.join("image");
    dir_image(&image, b"every nth");
    push_as_user(w, &image, &registry.host(), "smoke/app:v1");
    let proxy = FaultProxy::start(registry.registry.port);
    let rule = proxy.inject_every(Class::ManifestGet, Fault::RateLimited(7), 2);
    let realm = format!(
        "{}?service={}&scope=repository:smoke/app:pull",
        registry.tokens.realm(),
        registry.tokens.service()
    );
    let token = json(&curl(w, &[&realm]).2)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest = format!("{}/v2/smoke/app/manifests/v1", proxy.url());
    let args = [
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        "-H",
    ];
    let bearer = format!("Authorization: Bearer {token}");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut all = args.to_vec();
        all.extend([bearer.as_str(), manifest.as_str()]);
        let (code, headers, _) = curl(w, &all);
        if code == 429 {
            assert!(
                headers.to_lowercase().contains("retry-after: 7"),
                "{headers}"
            );
        }
        statuses.push(code);
    }
    assert_eq!(statuses, [200, 429, 200, 429]);
    assert_eq!(proxy.rate_limited(), 2);
    rule.clear();
    let mut all = args.to_vec();
    all.extend([bearer.as_str(), manifest.as_str()]);
    assert_eq!(curl(w, &all).0, 200);
}
